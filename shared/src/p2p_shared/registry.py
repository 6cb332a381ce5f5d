"""The tracker's registry: which live holder has which file, completely or in part. Time is passed in.

A holder is a seeder, or a leecher that serves while it downloads: for each file it registered it
is a complete or a partial holder, and each registration says which for the files it lists, so a
leecher that finishes registers the file again as complete. Per file, the complete and the partial
holders are two sets that sample k keys in O(k).

Holders are kept in an OrderedDict ordered by last contact, so a heartbeat is O(1) (move to the
end) and expiry only looks at the stale front of the dict. The registry never stores chunk
digests, only (file id, name, size, chunk size) per file.

Who may do what: a holder belongs to the address that registered it (the source address of the
datagram; its port may change, as when a seeder restarts); another address may not refresh,
change or remove it unless it is a `member` (proven by the swarm secret). Each sending address has a bounded share (holders, file registrations), and so does the
whole registry; every refusal says which cap (RegistryFull.reason).

Names: a file id may be registered under several entries (name, size, chunk size) by different
holders, since the tracker cannot check them (it never sees the manifest). It keeps at most
MAX_NAMES_PER_FILE of them per file, first come first kept while a holder still registers them,
so one bogus registration cannot hide the real name. A name lookup picks, among the files
registered under that name, the one with the most complete holders, then partial ones, then the
smallest file id: one heap per name, updated as counts change, stale entries dropped on the way,
so a lookup does not scan every file of a crowded name. The file list is kept in file id order
(a SortedList), so a page after a cursor costs O(log n + page).

A holder may also drop some of its files and stay registered with the others (a cache evicting
one): the same bookkeeping per file as when the holder leaves, its record kept.

It also remembers, for a day, the files whose last complete holder went silent (expired, as
opposed to unregistering, dropping the file or registering it as partial on purpose), until a
holder registers them complete again: partial holders alone may not make a whole copy, and an
operator wants to hear about it (the `p2p_tracker_files_without_seeders` gauge and its alert).
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from sortedcontainers import SortedList

from .errors import NotRegistrant, Refused, RegistryFull  # noqa: F401 (raised here, imported from here)
from .messages import FileEntry

HolderKey = tuple[str, int]  # (host, port) that peers connect to
Sender = tuple[str, int]  # the source (address, port) of a holder's datagrams
HolderKind = Literal["complete", "partial"]

LOST_FILE_MEMORY = 24 * 3600.0  # seconds a file whose complete holders all expired is remembered
MAX_LOST_FILES = 10_000
MAX_NAMES_PER_FILE = 8  # entries (name, size, chunk size) kept per file id


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
class _File:
    # The entries kept for this file id, each with how many holders registered it (insertion
    # order breaks ties: the first registered is shown first).
    entries: dict[FileEntry, int] = field(default_factory=dict)
    complete: _KeySet = field(default_factory=_KeySet)
    partial: _KeySet = field(default_factory=_KeySet)

    def rank(self, file_id: str) -> tuple[int, int, str]:
        """Heap order among the files of one name: most complete, then partial holders, then smallest id."""
        return -len(self.complete), -len(self.partial), file_id

    def names(self) -> set[str]:
        return {e.name for e in self.entries}

    def entry(self, name: str | None = None) -> FileEntry | None:
        """The entry most holders registered (under `name`, if given)."""
        kept = [e for e in self.entries if name is None or e.name == name]
        return max(kept, key=self.entries.__getitem__) if kept else None


@dataclass(slots=True)
class _Ranking:
    """The file ids registered under one name, as a heap of their ranks; an entry is stale when
    the file left the name or its counts changed since (a newer entry was pushed then)."""

    heap: list[tuple[int, int, str]] = field(default_factory=list)
    files: int = 0


@dataclass(slots=True)
class _Share:
    """What one sending address holds in the registry."""

    holders: int = 0
    files: int = 0


@dataclass(slots=True)  # one per holder: 100,000 of them must stay small
class HolderRecord:
    key: HolderKey
    owner: Sender | None  # who registered it; None: nobody in particular (a library caller)
    last_seen: float
    # file id -> (the entry it registered: the registry's own object when kept, held only in part)
    files: dict[str, tuple[FileEntry, bool]] = field(default_factory=dict)
    partial_files: int = 0

    def kinds(self) -> tuple[bool, bool]:
        """(complete for some file, partial for some file); a holder with no file is neither (a
        per-host peer with an empty cache is not a seeder)."""
        return len(self.files) > self.partial_files, self.partial_files > 0


class HolderRegistry:
    def __init__(
        self,
        ttl: float,
        max_holders: int = 100_000,
        max_files_per_holder: int = 1024,
        max_files: int = 200_000,
        max_holders_per_address: int | None = 1024,
        max_files_per_address: int | None = 4096,
    ) -> None:
        self.ttl = ttl
        self.max_holders = max_holders
        self.max_files_per_holder = max_files_per_holder
        self.max_files = max_files  # file registrations in all: a file three holders have counts three
        self.max_holders_per_address = max_holders_per_address  # None: no per-address cap
        self.max_files_per_address = max_files_per_address
        self._records: OrderedDict[HolderKey, HolderRecord] = OrderedDict()
        self._files: dict[str, _File] = {}  # file id -> its holders, while it has any
        self._order: SortedList = SortedList()  # every file id, for the paged list
        self._by_name: dict[str, _Ranking] = {}
        self._shares: dict[str, _Share] = {}  # sending address -> its share
        self._holdings = 0
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
    def holding_count(self) -> int:
        """File registrations in all (a file held by three holders counts three)."""
        return self._holdings

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

    # -- who may act on a holder, and the shares of each address ------------------------------

    def _own(self, key: HolderKey, sender: Sender | None, member: bool) -> HolderRecord | None:
        """The holder's record if the sender may act on it (None if there is none); NotRegistrant if not."""
        record = self._records.get(key)
        if record is not None and not member and sender is not None and record.owner not in (None, sender):
            if record.owner[0] != sender[0]:
                raise NotRegistrant(key)
        return record

    @staticmethod
    def _address(record: HolderRecord) -> str:
        return record.owner[0] if record.owner else record.key[0]

    def _share(self, record: HolderRecord) -> _Share:
        return self._shares.setdefault(self._address(record), _Share())

    def _release(self, record: HolderRecord) -> None:
        address = self._address(record)
        share = self._shares[address]
        share.holders -= 1
        share.files -= len(record.files)
        if share.holders == 0:
            del self._shares[address]

    # -- registering --------------------------------------------------------------------------

    def register(
        self,
        key: HolderKey,
        files: list[FileEntry],
        now: float,
        partial: bool = False,
        sender: Sender | None = None,
        member: bool = False,
    ) -> Literal["new", "refreshed"]:
        """Add or refresh a holder, which holds `files` completely, or in part if `partial`.

        `sender` is where the registration came from: it owns the holder from now on, and its
        address's share pays for it. A `member` may refresh a holder another sender registered,
        and takes it over."""
        record = self._own(key, sender, member)
        result: Literal["new", "refreshed"] = "refreshed"
        if record is None:
            if len(self._records) >= self.max_holders:
                raise RegistryFull("holders", f"registry holds its maximum of {self.max_holders} holders")
            record = HolderRecord(key, sender, now)
            share = self._shares.get(self._address(record))
            if share and self.max_holders_per_address is not None and share.holders >= self.max_holders_per_address:
                raise RegistryFull(
                    "holders_per_address", f"one address may register at most {self.max_holders_per_address} holders"
                )
            self._share(record).holders += 1
            self._records[key] = record
            result = "new"
        else:
            self._tally(record, -1)
            if sender is not None and record.owner != sender:  # a member, or a new socket of its address, takes it over
                self._release(record)
                record.owner = sender
                share = self._share(record)
                share.holders += 1
                share.files += len(record.files)
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
        held = record.files.get(file_id)
        if held is None:
            self._check_room(record)
            self._holdings += 1
            self._share(record).files += 1
            file = self._files.get(file_id)
            if file is None:
                file = self._files[file_id] = _File()
                self._order.add(file_id)
            entry = self._keep_entry(file, entry)
        else:
            file = self._files[file_id]
            entry, was_partial = held
            kept = any(e is entry for e in file.entries)
            if not kept:  # not kept when first registered: there may be room now
                entry = self._keep_entry(file, entry)
            if kept and partial == was_partial:
                return
            record.partial_files -= was_partial
        record.files[file_id] = (entry, partial)
        record.partial_files += partial
        if partial:
            file.complete.discard(record.key)
            file.partial.add(record.key)
        else:
            file.partial.discard(record.key)
            file.complete.add(record.key)
            self._lost.pop(file_id, None)
        self._ranked(file_id, file)

    def _check_room(self, record: HolderRecord) -> None:
        if len(record.files) >= self.max_files_per_holder:
            raise RegistryFull("files_per_holder", f"a holder may register at most {self.max_files_per_holder} files")
        if self.max_files_per_address is not None and self._share(record).files >= self.max_files_per_address:
            raise RegistryFull(
                "files_per_address", f"one address may register at most {self.max_files_per_address} files"
            )
        if self._holdings >= self.max_files:
            raise RegistryFull("files", f"registry holds its maximum of {self.max_files} file registrations")

    def _keep_entry(self, file: _File, entry: FileEntry) -> FileEntry:
        """Count a holder's entry for the file: the registry's own copy if it keeps that entry,
        a new one if there is room (under a name that may be new to the file), else the holder's."""
        for kept in file.entries:
            if kept == entry:
                file.entries[kept] += 1
                return kept
        if len(file.entries) >= MAX_NAMES_PER_FILE:
            return entry  # found by its id and the names kept; counted nowhere
        new_name = entry.name not in file.names()
        file.entries[entry] = 1
        if new_name:
            self._by_name.setdefault(entry.name, _Ranking()).files += 1
        return entry

    def _drop_entry(self, file: _File, entry: FileEntry) -> None:
        if not any(kept is entry for kept in file.entries):
            return  # a holder's own entry, never kept
        count = file.entries[entry]
        if count > 1:
            file.entries[entry] = count - 1
            return
        del file.entries[entry]
        if entry.name not in file.names():
            ranking = self._by_name[entry.name]
            ranking.files -= 1
            if ranking.files == 0:
                del self._by_name[entry.name]

    def _ranked(self, file_id: str, file: _File) -> None:
        """The file's counts changed: push its new rank under each of its names."""
        rank = file.rank(file_id)
        for name in file.names():
            ranking = self._by_name[name]
            heapq.heappush(ranking.heap, rank)
            if len(ranking.heap) > 2 * ranking.files + 16:  # mostly stale: keep each file's live rank
                live = {r[2]: r for r in ranking.heap if self._live(name, r)}
                ranking.heap = list(live.values())
                heapq.heapify(ranking.heap)

    def _live(self, name: str, rank: tuple[int, int, str]) -> bool:
        file = self._files.get(rank[2])
        return file is not None and file.rank(rank[2]) == rank and name in file.names()

    # -- keeping and dropping holders ---------------------------------------------------------

    def heartbeat(self, key: HolderKey, now: float, sender: Sender | None = None, member: bool = False) -> bool:
        """Refresh a holder; False if it is unknown (expired, or the tracker restarted)."""
        record = self._own(key, sender, member)
        if record is None:
            return False
        record.last_seen = now
        self._records.move_to_end(key)
        return True

    def unregister(self, key: HolderKey, sender: Sender | None = None, member: bool = False) -> bool:
        self._own(key, sender, member)
        return self._forget(key) is not None

    def drop(
        self, key: HolderKey, file_ids: list[str], now: float, sender: Sender | None = None, member: bool = False
    ) -> bool:
        """The holder no longer holds these files; False if it is unknown. It stays registered
        with its other files (or none), and the drop counts as contact, as a heartbeat does. A
        file it does not hold is ignored, and a file dropped this way is not lost (see expire)."""
        record = self._own(key, sender, member)
        if record is None:
            return False
        self._tally(record, -1)
        share = self._share(record)
        for file_id in file_ids:
            held = record.files.pop(file_id, None)
            if held is None:
                continue
            entry, held_in_part = held
            record.partial_files -= held_in_part
            self._holdings -= 1
            share.files -= 1
            self._let_go(key, file_id, entry, held_in_part)
        self._tally(record, +1)
        record.last_seen = now
        self._records.move_to_end(key)
        return True

    def _forget(self, key: HolderKey) -> list[str] | None:
        """Remove a holder; the file ids it leaves with no complete holder, or None if it was unknown."""
        record = self._records.pop(key, None)
        if record is None:
            return None
        self._tally(record, -1)
        self._release(record)
        self._holdings -= len(record.files)
        return [
            file_id
            for file_id, (entry, held_in_part) in record.files.items()
            if self._let_go(key, file_id, entry, held_in_part)
        ]

    def _let_go(self, key: HolderKey, file_id: str, entry: FileEntry, held_in_part: bool) -> bool:
        """Take one holding off the file's indexes (the holder's record and shares are the
        caller's); whether it was the file's last complete holder."""
        file = self._files[file_id]
        orphaned = False
        if held_in_part:
            file.partial.discard(key)
        else:
            file.complete.discard(key)
            orphaned = not file.complete
        self._drop_entry(file, entry)  # the last holder takes the last kept entry with it
        if file.complete or file.partial:
            self._ranked(file_id, file)
        else:
            del self._files[file_id]
            self._order.remove(file_id)
        return orphaned

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

    # -- answering ----------------------------------------------------------------------------

    def resolve(self, name: str | None = None, file_id: str | None = None) -> FileEntry | None:
        """The file a lookup means: by id, or the name's file with the most complete (then
        partial) holders, then the smallest id; its entry under that name."""
        if file_id is not None:
            file = self._files.get(file_id)
            return None if file is None else self._entry(file_id, file)
        ranking = self._by_name.get(name or "")
        if ranking is None:
            return None
        while not self._live(name or "", ranking.heap[0]):
            heapq.heappop(ranking.heap)
        best = ranking.heap[0][2]
        return self._files[best].entry(name)

    def _entry(self, file_id: str, file: _File) -> FileEntry:
        entry = file.entry()
        if entry is None:  # every kept entry's holders left: show what a remaining holder registered
            key = (file.complete.keys or file.partial.keys)[0]
            entry = self._records[key].files[file_id][0]
        return entry

    def holders(
        self, file_id: str, limit: int, rng: random.Random, exclude: HolderKey | None = None
    ) -> tuple[list[HolderKey], list[HolderKey]]:
        """Up to `limit` complete and up to `limit` partial holders of the file, each in random
        order so load spreads across holders, never `exclude` (the asker)."""
        file = self._files.get(file_id)
        if file is None:
            return [], []
        return file.complete.sample(limit, rng, exclude), file.partial.sample(limit, rng, exclude)

    def files(self, after: str | None = None, limit: int | None = None) -> list[tuple[FileEntry, int, int]]:
        """Files in file id order (those after `after`, at most `limit`), with their numbers of
        complete and partial holders."""
        start = 0 if after is None else self._order.bisect_right(after)
        stop = len(self._order) if limit is None else start + limit
        rows = []
        for file_id in self._order.islice(start, stop):
            file = self._files[file_id]
            rows.append((self._entry(file_id, file), len(file.complete), len(file.partial)))
        return rows


MAX_LEASES = 100_000  # live leases one tracker keeps; past it a new claim is refused (full)


class Leases:
    """Named leases, one holder each for `ttl` seconds: of many hosts that want the same thing
    from outside the swarm, the one whose claim comes first fetches it; the others see who does.
    A holder renews its lease by claiming again, and gives it back by releasing it; a holder that
    dies loses it when it runs out, and the next claim takes it over."""

    def __init__(self, ttl: float, max_leases: int = MAX_LEASES) -> None:
        self.ttl = ttl
        self.max_leases = max_leases
        self._leases: dict[str, tuple[HolderKey, float]] = {}  # key -> holder, until when

    def __len__(self) -> int:
        return len(self._leases)

    def claim(self, key: str, holder: HolderKey, now: float, release: bool = False) -> tuple[HolderKey | None, float]:
        """The lease's holder after this claim and the seconds it has left (None, 0: free)."""
        current = self._leases.get(key)
        if current is not None and current[1] > now and current[0] != holder:
            return current[0], current[1] - now
        if release:
            self._leases.pop(key, None)
            return None, 0.0
        if current is None and len(self._leases) >= self.max_leases:
            self.expire(now)
            if len(self._leases) >= self.max_leases:
                raise RegistryFull("leases", f"the tracker holds {self.max_leases} leases")
        self._leases[key] = (holder, now + self.ttl)
        return holder, self.ttl

    def expire(self, now: float) -> int:
        """Forget the leases that ran out; how many."""
        stale = [key for key, (_, until) in self._leases.items() if until <= now]
        for key in stale:
            del self._leases[key]
        return len(stale)
