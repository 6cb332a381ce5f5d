"""Super-seeding without I/O: which chunks a complete holder offers each downloader.

An origin that lets every downloader take any chunk sends the same chunk to several of them
before any can pass it on (libtorrent's origin sent 1.6 to 2.1 copies of the file to 8 leechers
in our testbed). Instead, as in BitTorrent's super-seeding (BEP 16), the origin announces to each
downloader only a few chunks, offered to no one else: each chunk it sends, each chunk a
downloader says it got elsewhere, and each offer it declines, makes room for one more. Every
origin of a file walks the same random order (from the file id), each from its own random
start, so that origins that cannot see each other's downloaders hand out different chunks. An
origin cannot see another's offers, only the chunks downloaders announce: when its walk meets
such a chunk, another origin is working that stretch of the order (two random starts close
together would otherwise follow each other, offering the same chunks), so it goes on from the
middle of the longest stretch that no downloader holds yet.

When the last downloader leaves, the next swarm starts a new walk (from a new random start).
Once every chunk has been offered, a chunk is offered again only if no connected downloader
holds it (its holders left before passing it on) and it is not on offer elsewhere; a chunk on
offer to downloaders that have taken nothing for `patience` seconds counts as free again, so a
downloader that hoards offers cannot hold the others back, and a downloader that has taken
nothing for that long may have any chunk it lacks, so one whose peers do not pass chunks on
(unreachable, or not sharing) is not held back either. Time is passed in (`now`).
Downloaders see the origin as a peer whose have-set grows.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Iterable

Conn = Hashable


class OfferBook:
    def __init__(
        self,
        num_chunks: int,
        window: int = 4,
        rng: random.Random | None = None,
        order_key: bytes = b"",
        patience: float = 10.0,
    ) -> None:
        self.num_chunks = num_chunks
        self.window = window
        self.patience = patience
        self._rng = rng or random.Random()
        order = list(range(num_chunks))
        random.Random(order_key).shuffle(order)
        self._position = [0] * num_chunks  # of each chunk in the shared order
        for position, index in enumerate(order):
            self._position[index] = position
        self._order = order
        self._begin()
        self._offered_to: dict[int, set[Conn]] = {}  # chunk -> downloaders it is on offer to
        self._offered: dict[Conn, set[int]] = {}
        self._holds: dict[Conn, set[int]] = {}
        self._declined: dict[Conn, set[int]] = {}
        self._active_at: dict[Conn, float] = {}  # when each last joined or took a chunk
        self._ever_offered: dict[Conn, set[int]] = {}  # it may still ask for these (declined ones too)

    def _begin(self) -> None:
        """A walk of the shared order from a random start, with nothing handed out yet."""
        start = self._rng.randrange(self.num_chunks) if self.num_chunks else 0
        self._fresh = deque(self._order[start:] + self._order[:start])  # never offered to anyone
        self._spread = [0] * self.num_chunks  # copies we sent + downloaders known to hold it
        self._holders_now = [0] * self.num_chunks  # connected downloaders that hold it

    def joined(self, conn: Conn) -> bool:
        return conn in self._offered

    def offered(self, conn: Conn) -> set[int]:
        return set(self._offered.get(conn, ()))

    def join(self, conn: Conn, now: float, holds: Iterable[int] = ()) -> list[int]:
        """A downloader asks what we have: its first offers."""
        self._offered[conn] = set()
        self._holds[conn] = set()
        self._declined[conn] = set()
        self._ever_offered[conn] = set()
        self._active_at[conn] = now
        for index in holds:
            self._note(conn, index)
        return self._top_up(conn, now)

    def leave(self, conn: Conn) -> None:
        """Offers never taken go back to the front, for the next downloader."""
        for index in self._offered.pop(conn, ()):
            self._offered_to[index].discard(conn)
            if not self._spread[index] and not self._offered_to[index] and index not in self._fresh:
                self._fresh.appendleft(index)
        for index in self._holds.pop(conn, ()):
            self._holders_now[index] -= 1
        self._declined.pop(conn, None)
        self._ever_offered.pop(conn, None)
        self._active_at.pop(conn, None)
        if not self._offered:  # the swarm is gone: the next one starts a new walk
            self._begin()

    def sent(self, conn: Conn, index: int, now: float) -> list[int]:
        """We sent `index` to `conn`: new offers for it."""
        if conn not in self._offered:
            return []
        self._active_at[conn] = now
        self._withdraw(conn, index)
        self._note(conn, index)
        return self._top_up(conn, now)

    def claim(self, conn: Conn, index: int) -> bool:
        """`conn` asks for `index`: whether we send it. A chunk ever offered to it, yes; one no
        other downloader got or was offered yet (a streaming reader wants it now), yes, and it is
        taken out of the walk; else no: the peers that hold it are where to get it."""
        if conn not in self._offered or index in self._offered[conn] or index in self._ever_offered.get(conn, ()):
            return True
        if self._spread[index] or self._offered_to.get(index):
            return False
        with_index = [i for i in self._fresh if i != index]
        if len(with_index) != len(self._fresh):
            self._fresh = deque(with_index)
        self._note(conn, index)
        return True

    def holds(self, conn: Conn, indices: Iterable[int], now: float) -> list[int]:
        """`conn` says it holds these chunks (from anyone): new offers for it."""
        if conn not in self._offered:
            return []
        for index in indices:
            self._withdraw(conn, index)
            self._note(conn, index)
        return self._top_up(conn, now)

    def decline(self, conn: Conn, indices: Iterable[int], now: float) -> list[int]:
        """`conn` fetches these offered chunks elsewhere: others for it instead. They are not
        offered to it again (it may still ask for them)."""
        if conn not in self._offered:
            return []
        for index in indices:
            if 0 <= index < self.num_chunks:
                self._withdraw(conn, index)
                self._declined[conn].add(index)
        return self._top_up(conn, now)

    def top_up_all(self, now: float) -> dict[Conn, list[int]]:
        """New offers for every downloader with room (offers that went stale free up over time)."""
        return {conn: new for conn in list(self._offered) if (new := self._top_up(conn, now))}

    def _withdraw(self, conn: Conn, index: int) -> None:
        if index in self._offered[conn]:
            self._offered[conn].discard(index)
            self._offered_to[index].discard(conn)

    def _note(self, conn: Conn, index: int) -> None:
        if index not in self._holds[conn]:
            self._holds[conn].add(index)
            self._spread[index] += 1
            self._holders_now[index] += 1

    def _jump(self) -> None:
        """Drop the chunks someone holds from the walk, and go on from the middle of the longest
        run of consecutive positions (in the shared order) left in it."""
        fresh = [i for i in self._fresh if not self._spread[i]]
        position = self._position
        best, best_length, start, length = 0, 0, 0, 0
        for k, index in enumerate(fresh):
            if k and position[index] == position[fresh[k - 1]] + 1:
                length += 1
            else:
                start, length = k, 1
            if length > best_length:
                best, best_length = start, length
        middle = best + best_length // 2
        self._fresh = deque(fresh[middle:] + fresh[:middle])

    def _top_up(self, conn: Conn, now: float) -> list[int]:
        offers = self._offered[conn]
        new = []
        while len(offers) < self.window and (index := self._next_for(conn, now)) is not None:
            offers.add(index)
            self._ever_offered[conn].add(index)
            self._offered_to.setdefault(index, set()).add(conn)
            new.append(index)
        return new

    def _next_for(self, conn: Conn, now: float) -> int | None:
        holds, offers, declined = self._holds[conn], self._offered[conn], self._declined[conn]
        skipped = []
        found = None
        while self._fresh:
            index = self._fresh.popleft()
            if self._spread[index]:  # someone got it elsewhere: another origin works here
                self._jump()
                continue
            if index in holds or index in declined:
                skipped.append(index)  # still fresh for the others
                continue
            found = index
            break
        self._fresh.extendleft(reversed(skipped))
        if found is not None:
            return found
        # Every chunk is out once: only a chunk that no connected downloader holds, and that is
        # not on offer to a downloader still taking chunks, the least spread first. A downloader
        # that has taken nothing for `patience` seconds (its peers do not pass chunks on to it)
        # may have any chunk it lacks.
        starved = now - self._active_at[conn] > self.patience
        best, best_key = None, None
        for index in range(self.num_chunks):
            if index in holds or index in offers or index in declined or (self._holders_now[index] and not starved):
                continue
            if any(now - self._active_at[other] <= self.patience for other in self._offered_to.get(index, ())):
                continue
            key = (self._spread[index], self._rng.random())
            if best_key is None or key < best_key:
                best, best_key = index, key
        return best
