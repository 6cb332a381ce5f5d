"""Super-seeding without I/O: which chunks a complete holder offers each downloader.

An origin that lets every downloader take any chunk sends the same chunk to several of them
before any can pass it on (libtorrent's origin sent 2.1 copies of the file to 8 leechers in our
testbed). Instead, as in BitTorrent's super-seeding (BEP 16), the origin announces to each
downloader only a few chunks, never offered to anyone else while unoffered chunks remain; each
chunk it sends, and each chunk a downloader says it got elsewhere, makes room for one more
offer. Once every chunk has been offered, the least spread chunks are offered again, so the
tail of a download is never held back. Downloaders see the origin as a peer whose have-set grows.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Iterable

Conn = Hashable


class OfferBook:
    def __init__(self, num_chunks: int, window: int = 8, rng: random.Random | None = None, order_key: bytes = b"") -> None:
        self.num_chunks = num_chunks
        self.window = window
        self._rng = rng or random.Random()
        # Every origin of a file walks the same random order (from the file id), each from its
        # own random starting point: origins that cannot see each other's downloaders still
        # hand out different chunks until one walk reaches chunks another has spread already.
        order = list(range(num_chunks))
        random.Random(order_key).shuffle(order)
        start = self._rng.randrange(num_chunks) if num_chunks else 0
        self._fresh = deque(order[start:] + order[:start])  # never offered to anyone
        self._spread = [0] * num_chunks  # copies we sent + downloaders known to hold it
        self._offers_out = [0] * num_chunks  # downloaders it is offered to right now
        self._holders_now = [0] * num_chunks  # connected downloaders that hold it
        self._offered: dict[Conn, set[int]] = {}
        self._holds: dict[Conn, set[int]] = {}
        self._declined: dict[Conn, set[int]] = {}

    def join(self, conn: Conn, holds: Iterable[int] = ()) -> list[int]:
        """A downloader asks what we have: its first offers."""
        self._offered[conn] = set()
        self._holds[conn] = set()
        self._declined[conn] = set()
        for index in holds:
            self._note(conn, index)
        return self._top_up(conn)

    def joined(self, conn: Conn) -> bool:
        return conn in self._offered

    def offered(self, conn: Conn) -> set[int]:
        return set(self._offered.get(conn, ()))

    def leave(self, conn: Conn) -> None:
        """Offers never taken go back to the front, for the next downloader."""
        for index in self._offered.pop(conn, ()):
            self._offers_out[index] -= 1
            if self._spread[index] == 0 and not self._offers_out[index] and index not in self._fresh:
                self._fresh.appendleft(index)
        for index in self._holds.pop(conn, ()):
            self._holders_now[index] -= 1
        self._declined.pop(conn, None)

    def sent(self, conn: Conn, index: int) -> list[int]:
        """We sent `index` to `conn`: new offers for it."""
        if conn not in self._offered:
            return []
        self._withdraw(conn, index)
        self._note(conn, index)
        return self._top_up(conn)

    def holds(self, conn: Conn, indices: Iterable[int]) -> list[int]:
        """`conn` says it holds these chunks (from anyone): new offers for it."""
        if conn not in self._offered:
            return []
        for index in indices:
            self._withdraw(conn, index)
            self._note(conn, index)
        return self._top_up(conn)

    def decline(self, conn: Conn, indices: Iterable[int]) -> list[int]:
        """`conn` fetches these offered chunks elsewhere: others for it instead. They are not
        offered to it again (it may still ask for them)."""
        if conn not in self._offered:
            return []
        for index in indices:
            if 0 <= index < self.num_chunks:
                self._withdraw(conn, index)
                self._declined[conn].add(index)
        return self._top_up(conn)

    def _withdraw(self, conn: Conn, index: int) -> None:
        if index in self._offered[conn]:
            self._offered[conn].discard(index)
            self._offers_out[index] -= 1

    def _note(self, conn: Conn, index: int) -> None:
        if index not in self._holds[conn]:
            self._holds[conn].add(index)
            self._spread[index] += 1
            self._holders_now[index] += 1

    def _top_up(self, conn: Conn) -> list[int]:
        offers = self._offered[conn]
        new = []
        while len(offers) < self.window and (index := self._next_for(conn)) is not None:
            offers.add(index)
            self._offers_out[index] += 1
            new.append(index)
        return new

    def _next_for(self, conn: Conn) -> int | None:
        holds, offers = self._holds[conn], self._offered[conn]
        skipped = []
        found = None
        while self._fresh:
            index = self._fresh.popleft()
            if index in holds or self._spread[index]:
                if not self._spread[index]:
                    skipped.append(index)  # still fresh for the others
                continue
            found = index
            break
        self._fresh.extendleft(reversed(skipped))
        if found is not None:
            return found
        # Every chunk is out once. Offer again only a chunk that no connected downloader holds
        # (its holders left before passing it on): the others, downloaders get from each other.
        # A chunk still on offer to a downloader that has not taken it yet comes last: offering
        # it here too would most likely send it twice.
        best, best_key = None, None
        for index in range(self.num_chunks):
            if index in holds or index in offers or self._holders_now[index] or index in self._declined[conn]:
                continue
            reserved = self._spread[index] == 0 and self._offers_out[index] > 0
            key = (reserved, self._spread[index], self._offers_out[index], self._rng.random())
            if best_key is None or key < best_key:
                best, best_key = index, key
        return best
