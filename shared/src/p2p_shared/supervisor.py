"""One download's supervision, without I/O: when to look the file up again, which peers to
connect to, what a peer's failure means, and when to give up. Time is passed in (`now`).

Lookups come soon, then less often: leechers that start together register moments apart, and
the first of them must meet the others before it has fetched everything. Origins (complete
holders) are connected first: every origin we talk to hears which chunks we hold, so it offers
us chunks no one has yet. A peer that fails backs off; one that sends bad data or breaks the
protocol is banned for the rest of the download. No verified chunk for `wait` seconds, whatever
the peers do, ends the download with a reason.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from .errors import PeerBanned, PeerClosed, PeerConnectError, PeerError, PeerTimeout, RemoteProtocolError
from .peers import Peer, PeerBook
from .plan import ChunkPlan

FIRST_REFRESH = 0.25  # seconds to the first lookup after the start; doubling up to the refresh interval


@dataclass(frozen=True, slots=True)
class Ending:
    """What a peer's end means: the retries metric's `reason`, and whether it is banned
    (`dropped`: the dropped-peers metric's reason) or backs off (`failures` in a row)."""

    reason: str
    dropped: str | None = None
    failures: int = 0


def retry_reason(exc: BaseException) -> str:
    if isinstance(exc, PeerTimeout):
        return "timeout"
    if isinstance(exc, (PeerClosed, PeerConnectError, OSError)):
        return "connection"
    if isinstance(exc, PeerBanned):
        return "bad_peer"
    if isinstance(exc, PeerError):
        return "peer_error"
    return "protocol"


class Supervisor:
    def __init__(
        self, wait: float, max_peers: int, refresh_interval: float, now: float, rng: random.Random | None = None
    ) -> None:
        self.wait = wait
        self.max_peers = max_peers
        self.refresh_interval = refresh_interval
        self.book = PeerBook()
        self._rng = rng or random.Random()
        self._looked_up = now
        self._lookup_every = FIRST_REFRESH
        self.progress_at = now  # the start, or the last verified chunk
        self.last_failure = ""  # why the last peer connection ended

    def begin(self, now: float) -> None:
        """The swarm starts (the file found, its manifest checked): the clocks start now."""
        self._looked_up = self.progress_at = now

    def meet(self, complete: Iterable[Peer], partial: Iterable[Peer]) -> None:
        for peer in complete:
            self.book.meet(peer, origin=True)
        for peer in partial:
            self.book.meet(peer)

    def lookup_due(self, now: float, connected: int) -> bool:
        """Whether to look the file up again now (and if so, the next one is scheduled)."""
        if now - self._looked_up < (self._lookup_every if connected else FIRST_REFRESH):
            return False
        self._looked_up = now
        self._lookup_every = min(2 * self._lookup_every, self.refresh_interval)
        return True

    def next_lookup(self, connected: int) -> float:
        return self._looked_up + (self._lookup_every if connected else FIRST_REFRESH)

    def candidates(self, active: Collection[Peer], now: float) -> list[Peer]:
        """Peers to connect to now, origins first, within `max_peers` connections."""
        room = self.max_peers - len(active)
        if room <= 0:
            return []
        usable = [p for p in self.book.known() if p not in active and self.book.usable(p, now)]
        self._rng.shuffle(usable)
        return sorted(usable, key=lambda p: not self.book.is_origin(p))[:room]

    def delivered(self, peer: Peer, now: float) -> None:
        self.book.delivered(peer)
        self.progress_at = now

    def ended(self, peer: Peer, exc: BaseException, label: str, now: float) -> Ending:
        """A peer's connection ended with `exc`: ban it, or let it back off."""
        reason = retry_reason(exc)
        self.last_failure = f"{label}: {exc}"
        if isinstance(exc, (PeerBanned, RemoteProtocolError)):  # bad data or a broken protocol: not asked again
            self.book.ban(peer, str(exc))
            return Ending(reason, dropped="bad_data" if isinstance(exc, PeerBanned) else "protocol")
        return Ending(reason, failures=self.book.failed(peer, now))

    def stalled(self, now: float, connected: int, plan: ChunkPlan) -> str | None:
        """Why the download has to stop, once no chunk came for `wait` seconds; None before."""
        if now - self.progress_at <= self.wait:
            return None
        last = f" (last: {self.last_failure})" if self.last_failure else ""
        if not connected:
            return f"no holder reachable{last}"
        if not plan.missing_held():
            return f"the {connected} connected peers hold none of the {plan.num_chunks - plan.done_count} chunks missing"
        return f"{connected} peers connected, none delivered a valid chunk{last}"
