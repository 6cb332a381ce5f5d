"""The chunk plan: which chunk each peer connection should fetch next.

Every peer pulls from one shared plan, so fast peers serve more. A peer is asked only for
chunks it announced (its HAVE, then its ANNOUNCEs). Among those, the rarest chunk goes first
(the fewest known peers hold it), ties broken by a random rank of this plan's own, so that
leechers of one swarm start on different chunks; the first few picks ignore rarity altogether
and only follow that random rank. An origin (a complete holder named by the tracker) is not
asked for chunks that a partial holder we know already has: its upload is spent on chunks no
leecher holds yet. A failed chunk is not handed to a peer that already failed it while another
peer that has not failed it remains. When no chunk is left unassigned, chunks in flight are
handed out a second time (endgame) and the first verified copy wins.

A reader that streams the file (the HTTP gateway) makes the chunks just ahead of its position
urgent (`prioritize`): they go first to any peer that holds them, before rarity counts, as
libtorrent's piece deadlines do; the rest of the file is still fetched rarest-first. An urgent
chunk no partial holder has may be asked of an origin even if it did not offer it (it holds
every chunk): it sends it if no other downloader has it yet, else it says where to look
(`elsewhere`), and that origin is not asked for that chunk again until it offers it.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable

Peer = Hashable


class ChunkPlan:
    def __init__(
        self,
        num_chunks: int,
        done: Iterable[int] = (),
        endgame_copies: int = 2,
        random_first: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self.num_chunks = num_chunks
        self.endgame_copies = endgame_copies
        self.random_first = random_first
        rng = rng or random.Random()
        order = list(range(num_chunks))
        rng.shuffle(order)
        self._rank = [0] * num_chunks  # each chunk's place in this plan's random order
        for place, index in enumerate(order):
            self._rank[index] = place
        self._done: set[int] = set(done)
        # Unassigned chunks, in rank order (so a scan meets ties in random order).
        self._pending: dict[int, None] = dict.fromkeys(i for i in order if i not in self._done)
        self._in_flight: dict[int, set[Peer]] = {}
        self._failed_by: dict[int, set[Peer]] = {}
        self._have: dict[Peer, set[int] | None] = {}  # peer -> chunks it has (None: all)
        self._origins: set[Peer] = set()
        self._assigned: dict[Peer, set[int]] = {}
        self._avail = [0] * num_chunks  # peers holding each chunk
        self._partial_avail = [0] * num_chunks  # of them, peers that are not origins
        self._full_peers = 0
        self._picked = 0
        self._urgent: list[int] = []  # chunks readers wait for, most urgent first
        self._elsewhere: dict[Peer, set[int]] = {}  # origin -> urgent chunks it would not send us

    @property
    def finished(self) -> bool:
        return len(self._done) == self.num_chunks

    @property
    def done_count(self) -> int:
        return len(self._done)

    def is_done(self, index: int) -> bool:
        return index in self._done

    @property
    def unassigned_count(self) -> int:
        """Chunks neither verified nor in flight."""
        return len(self._pending)

    @property
    def peers(self) -> list[Peer]:
        return list(self._have)

    def taken_elsewhere(self, index: int, peer: Peer) -> bool:
        """Verified already, or being fetched from another peer."""
        return index in self._done or bool(self._in_flight.get(index, set()) - {peer})

    def holds(self, peer: Peer, index: int) -> bool:
        """Whether `peer` announced `index`."""
        have = self._have.get(peer, set())
        return have is None or index in have

    def availability(self, index: int) -> int:
        return self._avail[index]

    def missing_held(self) -> int:
        """Chunks not verified yet that at least one connected peer announced."""
        return sum(1 for i, n in enumerate(self._avail) if n and i not in self._done)

    def prioritize(self, indices: Iterable[int]) -> None:
        """Chunks to fetch before all others, in this order (replaces the previous list)."""
        self._urgent = [i for i in indices if 0 <= i < self.num_chunks and i not in self._done]

    @property
    def urgent(self) -> list[int]:
        return [i for i in self._urgent if i not in self._done]

    def add_peer(self, peer: Peer, have: Iterable[int] | None = None, origin: bool = False) -> None:
        """A peer and what it holds (None: every chunk). An origin is a complete holder."""
        self.remove_peer(peer)
        self._have[peer] = None if have is None else set()
        self._assigned[peer] = set()
        if origin:
            self._origins.add(peer)
        if have is None:
            self._full_peers += 1
            self._count(range(self.num_chunks), +1, origin)
        else:
            self.peer_has(peer, have)

    def set_have(self, peer: Peer, have: Iterable[int] | None) -> None:
        """What a peer in the plan holds, replacing what it was thought to hold (an origin added
        before its have-set came); the chunks asked of it stay asked."""
        old = self._have.get(peer, set())
        if peer not in self._have:
            return
        origin = peer in self._origins
        if old is None:
            self._full_peers -= 1
            self._count(range(self.num_chunks), -1, origin)
        else:
            self._count(old, -1, origin)
        self._have[peer] = None if have is None else set()
        if have is None:
            self._full_peers += 1
            self._count(range(self.num_chunks), +1, origin)
        else:
            self.peer_has(peer, have)

    def elsewhere(self, peer: Peer, index: int) -> None:
        """An origin would not send this chunk (others have it): back to the plan, and not asked
        of that origin again unless it offers it."""
        self._elsewhere.setdefault(peer, set()).add(index)
        self._release(index, peer)

    def peer_has(self, peer: Peer, indices: Iterable[int]) -> None:
        """The peer announced more chunks."""
        have = self._have.get(peer)
        if peer in self._elsewhere:
            self._elsewhere[peer].difference_update(indices)
        if have is None:
            return  # unknown peer, or one that has everything already
        new = {i for i in indices if 0 <= i < self.num_chunks and i not in have}
        have.update(new)
        self._count(new, +1, peer in self._origins)

    def _count(self, indices: Iterable[int], step: int, origin: bool) -> None:
        avail, partial = self._avail, self._partial_avail
        for i in indices:
            avail[i] += step
            if not origin:
                partial[i] += step

    def remove_peer(self, peer: Peer) -> list[int]:
        """Forget a peer; its unfinished chunks go back to the plan. Returns them."""
        if peer not in self._have:
            return []
        have = self._have.pop(peer)
        self._elsewhere.pop(peer, None)
        origin = peer in self._origins
        self._origins.discard(peer)
        if have is None:
            self._full_peers -= 1
            self._count(range(self.num_chunks), -1, origin)
        else:
            self._count(have, -1, origin)
        returned = []
        for index in sorted(self._assigned.pop(peer, set())):
            if self._release(index, peer):
                returned.append(index)
        return returned

    def assigned(self, peer: Peer) -> set[int]:
        return set(self._assigned.get(peer, ()))

    def next_chunk(self, peer: Peer, urgent_only: bool = False) -> int | None:
        """The chunk `peer` should request next, or None if it has nothing to do now (with
        `urgent_only`: nothing but a chunk a reader waits for)."""
        if peer not in self._have:
            return None
        have = self._have[peer]
        origin = peer in self._origins
        for index in self._urgent:
            if index not in self._pending or not self._eligible(index, peer):
                continue
            unoffered = origin and not self._partial_avail[index] and index not in self._elsewhere.get(peer, ())
            if have is None or index in have or unoffered:
                del self._pending[index]
                self._picked += 1
                return self._assign(index, peer)
        if urgent_only:
            return None
        rarity = self._picked >= self.random_first
        floor = max(1, self._full_peers)  # no chunk is rarer than this: stop at the first one
        best, best_key = None, None
        # Scan the smaller of the peer's chunks and the unassigned ones.
        candidates = self._pending if have is None or len(have) >= len(self._pending) else have
        for index in candidates:
            if index not in self._pending or (have is not None and index not in have):
                continue
            if origin and self._partial_avail[index]:
                continue  # a partial holder has it: leave the origin's upload to new chunks
            if not self._eligible(index, peer):
                continue
            key = (self._avail[index] if rarity else 0, self._rank[index])
            if best_key is None or key < best_key:
                best, best_key = index, key
                if candidates is self._pending and key[0] <= floor:
                    break  # in rank order: nothing later beats it
        if best is not None:
            del self._pending[best]
            self._picked += 1
            return self._assign(best, peer)
        if self._pending:
            return None
        # Endgame: nothing left unassigned; duplicate a chunk in flight elsewhere.
        for index, holders in self._in_flight.items():
            if (
                len(holders) < self.endgame_copies
                and peer not in holders
                and (have is None or index in have)
                and self._eligible(index, peer)
            ):
                return self._assign(index, peer)
        return None

    def complete(self, index: int, peer: Peer) -> bool:
        """Record a verified chunk. True if it was the first copy (the caller keeps it)."""
        self._unassign(index, peer)
        if index in self._done:
            return False
        self._done.add(index)
        self._pending.pop(index, None)
        for other in self._in_flight.pop(index, set()):
            self._assigned[other].discard(index)
        self._failed_by.pop(index, None)
        return True

    def fail(self, index: int, peer: Peer) -> None:
        """The peer did not deliver a valid copy: remember that and put the chunk back."""
        if index in self._done:
            self._unassign(index, peer)
            return
        self._failed_by.setdefault(index, set()).add(peer)
        self._release(index, peer)

    def _eligible(self, index: int, peer: Peer) -> bool:
        failed = self._failed_by.get(index)
        if not failed or peer not in failed:
            return True
        # This peer failed it before: only retry here if every other peer that could serve it
        # has failed it too.
        return all(other in failed for other, have in self._have.items() if have is None or index in have)

    def _assign(self, index: int, peer: Peer) -> int:
        self._in_flight.setdefault(index, set()).add(peer)
        self._assigned[peer].add(index)
        return index

    def _unassign(self, index: int, peer: Peer) -> None:
        self._assigned.get(peer, set()).discard(index)
        holders = self._in_flight.get(index)
        if holders is not None:
            holders.discard(peer)
            if not holders:
                del self._in_flight[index]

    def _release(self, index: int, peer: Peer) -> bool:
        """Drop peer's claim; the chunk is unassigned again if no one else is fetching it."""
        self._unassign(index, peer)
        if index in self._done or index in self._in_flight or index in self._pending:
            return False
        # First in line again (it is usually rarer now, and a retry should not wait its turn).
        self._pending = {index: None, **self._pending}
        return True
