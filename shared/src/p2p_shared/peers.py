"""The download's book of peers, without I/O: who may be tried now, and each connection's
request window. Time is passed in (`now`), so tests run on a fake clock."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

Peer = Hashable

FIRST_BACKOFF = 0.25
MAX_BACKOFF = 5.0


@dataclass
class _Record:
    failures: int = 0
    retry_at: float = 0.0
    banned: str | None = None  # why
    origin: bool = False


class PeerBook:
    """Peers met through the tracker: failures back off (0.25 s, doubling, at most 5 s), a
    verified chunk clears them, a peer that sends bad data or is not one of ours is banned for
    the rest of the download."""

    def __init__(self) -> None:
        self._peers: dict[Peer, _Record] = {}

    def meet(self, peer: Peer, origin: bool = False) -> None:
        record = self._peers.setdefault(peer, _Record())
        record.origin = record.origin or origin

    def known(self) -> list[Peer]:
        return list(self._peers)

    def is_origin(self, peer: Peer) -> bool:
        record = self._peers.get(peer)
        return record is not None and record.origin

    def usable(self, peer: Peer, now: float) -> bool:
        record = self._peers.get(peer)
        return record is not None and record.banned is None and record.retry_at <= now

    def failed(self, peer: Peer, now: float) -> int:
        """A connection to it failed: back off. Returns its failures in a row."""
        record = self._peers[peer]
        record.failures += 1
        record.retry_at = now + min(FIRST_BACKOFF * 2**record.failures, MAX_BACKOFF)
        return record.failures

    def delivered(self, peer: Peer) -> None:
        self._peers[peer].failures = 0

    def ban(self, peer: Peer, reason: str) -> None:
        self._peers[peer].banned = reason

    def banned(self, peer: Peer) -> str | None:
        record = self._peers.get(peer)
        return None if record is None else record.banned


@dataclass
class RequestWindow:
    """One connection's requests: at most `depth` chunks asked for or being verified at once,
    and a peer that sends `max_bad` chunks that fail verification (or refuses as many) is done."""

    depth: int
    max_bad: int
    outstanding: set[int] = field(default_factory=set)
    verifying: int = 0
    bad: int = 0

    @property
    def room(self) -> int:
        return self.depth - len(self.outstanding) - self.verifying

    def asked(self, index: int) -> None:
        self.outstanding.add(index)

    def arrived(self, index: int) -> bool:
        """A chunk arrived: False if we did not ask for it (a protocol violation)."""
        if index not in self.outstanding:
            return False
        self.outstanding.discard(index)
        return True

    def refused(self, index: int) -> bool:
        """The peer answered a request with an error: True if it was one of ours."""
        if index not in self.outstanding:
            return False
        self.outstanding.discard(index)
        return True

    def strike(self) -> bool:
        """A bad chunk or a refusal: True once the peer has had too many."""
        self.bad += 1
        return self.bad >= self.max_bad
