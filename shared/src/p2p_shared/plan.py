"""The chunk plan: which chunk each peer connection should fetch next.

Every peer pulls from one shared plan, so fast peers serve more. A failed chunk returns to the
front of the queue and is not handed to a peer that already failed it while another peer that
has not failed it remains. When nothing is pending, chunks in flight elsewhere are handed out a
second time (endgame) and the first verified copy wins.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable

Peer = Hashable


class ChunkPlan:
    def __init__(self, num_chunks: int, done: Iterable[int] = (), endgame_copies: int = 2) -> None:
        self.num_chunks = num_chunks
        self.endgame_copies = endgame_copies
        self._done: set[int] = set(done)
        self._pending: deque[int] = deque(i for i in range(num_chunks) if i not in self._done)
        self._in_flight: dict[int, set[Peer]] = {}
        self._failed_by: dict[int, set[Peer]] = {}
        self._peers: dict[Peer, set[int] | None] = {}  # peer -> chunks it has (None: all)
        self._assigned: dict[Peer, set[int]] = {}

    @property
    def finished(self) -> bool:
        return len(self._done) == self.num_chunks

    @property
    def done_count(self) -> int:
        return len(self._done)

    def is_done(self, index: int) -> bool:
        return index in self._done

    @property
    def peers(self) -> list[Peer]:
        return list(self._peers)

    def add_peer(self, peer: Peer, have: Iterable[int] | None = None) -> None:
        self._peers[peer] = None if have is None else set(have)
        self._assigned.setdefault(peer, set())

    def remove_peer(self, peer: Peer) -> list[int]:
        """Forget a peer; its unfinished chunks go back to the plan. Returns them."""
        self._peers.pop(peer, None)
        returned = []
        for index in sorted(self._assigned.pop(peer, set()), reverse=True):  # front of queue ends ascending
            if self._release(index, peer):
                returned.append(index)
        return sorted(returned)

    def assigned(self, peer: Peer) -> set[int]:
        return set(self._assigned.get(peer, ()))

    def next_chunk(self, peer: Peer) -> int | None:
        """The chunk `peer` should request next, or None if it has nothing to do now."""
        if peer not in self._peers:
            return None
        for index in self._pending:
            if self._eligible(index, peer):
                self._pending.remove(index)
                return self._assign(index, peer)
        # Endgame: nothing pending for this peer; duplicate a chunk in flight elsewhere.
        for index, holders in self._in_flight.items():
            if len(holders) < self.endgame_copies and peer not in holders and self._eligible(index, peer):
                return self._assign(index, peer)
        return None

    def complete(self, index: int, peer: Peer) -> bool:
        """Record a verified chunk. True if it was the first copy (the caller keeps it)."""
        self._unassign(index, peer)
        if index in self._done:
            return False
        self._done.add(index)
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
        have = self._peers[peer]
        if have is not None and index not in have:
            return False
        failed = self._failed_by.get(index)
        if not failed or peer not in failed:
            return True
        # This peer failed it before: only retry here if every other peer that could serve it
        # has failed it too.
        return all(
            other in failed
            for other, other_have in self._peers.items()
            if other_have is None or index in other_have
        )

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
        """Drop peer's claim; requeue the chunk (at the front) if no one else is fetching it."""
        self._unassign(index, peer)
        if index in self._done or index in self._in_flight or index in self._pending:
            return False
        self._pending.appendleft(index)
        return True
