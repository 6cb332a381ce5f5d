"""One download's conversations with its peers, without I/O: what to send, what each frame means.

A `Swarm` holds the chunk plan of one file and a `PeerSession` per connected peer. The I/O shell
feeds it what happened, `receive(peer, event, now)`: a frame from the peer, or `Checked`, the
verdict on a chunk the shell hashed and wrote. It answers with effects for the shell to carry
out (hash this payload, give this buffer back, a chunk is verified, end this peer), and leaves
the frames to send in each session's outbox: one event may queue frames for several peers (an
ANNOUNCE of a verified chunk to all of them, a DECLINE to an origin that offered a chunk another
peer is sending). Time is passed in: a request paced by the download rate limit waits in its
session until `ready_at`, and a peer silent with requests outstanding times out at `deadline`;
the shell waits for those moments, as a simulator would advance its clock to them.

The shell sends what `take_due` gives. Announcements alone wait up to ANNOUNCE_DELAY for a
request to that peer to go with: a peer we download from gets ours with its next request, in
the same write, instead of an ANNOUNCE frame (a system call here, a wake-up and a frame to
decode there) after every chunk we receive from anyone. The peer a chunk came from is not told.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from random import Random

import structlog

from . import wire
from .errors import PeerBanned, PeerError, PeerTimeout, RemoteProtocolError
from .manifest import Manifest
from .peers import RequestWindow
from .plan import ChunkPlan
from .ratelimit import TokenBucket

log = structlog.get_logger()
Peer = Hashable
ANNOUNCE_DELAY = 0.05  # seconds announcements alone may wait for a frame to go with
SOLO = 0.5  # seconds a download's first chunk a reader waits for is asked alone, at most


# -- what the shell tells the swarm, besides frames ------------------------------------------


@dataclass(slots=True)
class Checked:
    """The shell hashed (and, if it matched, wrote) chunk `index`; `buffer` held its bytes."""

    index: int
    ok: bool
    buffer: object = None


# -- what the swarm asks of the shell ------------------------------------------------------------


@dataclass(slots=True)
class Verify:
    """Hash this payload against the manifest and write it if it matches; answer `Checked`."""

    index: int
    data: memoryview
    buffer: object


@dataclass(slots=True)
class Release:
    """A chunk buffer no longer needed (an endgame copy that lost the race)."""

    buffer: object


@dataclass(slots=True)
class Delivered:
    """The first valid copy of a chunk: verified and written."""

    index: int
    length: int
    origin: bool


@dataclass(slots=True)
class Rejected:
    """A chunk that failed verification; it goes back to the plan."""

    index: int


@dataclass(slots=True)
class Returned:
    """Chunks put back in the plan, and why (the retries metric's reason)."""

    count: int
    reason: str


@dataclass(slots=True)
class End:
    """This peer is done for this download (after the effects before it)."""

    error: PeerError | RemoteProtocolError


Effect = Verify | Release | Delivered | Rejected | Returned | End


class PeerSession:
    """One peer's conversation about one file: its request window and the frames waiting to go."""

    __slots__ = (
        "peer", "label", "origin", "announces", "window", "outbox", "announce_due", "ready", "have_seen", "ended", "held",
        "heard_at",
    )

    def __init__(self, peer: Peer, label: str, origin: bool, announces: bool, depth: int, max_bad: int, now: float):
        self.peer = peer
        self.label = label
        self.origin = origin  # a complete holder named by the tracker
        self.announces = announces  # it sends and understands ANNOUNCE (and DECLINE)
        self.window = RequestWindow(depth, max_bad)
        self.outbox: list[wire.Event] = []
        self.announce_due: float | None = None  # the outbox holds announcements that must go by then
        self.ready = False  # it is in the plan: its have-set arrived, or it is an origin
        self.have_seen = False  # its have-set arrived
        self.ended = False  # an End was returned for it: nothing more is asked of it until it closes
        self.held: tuple[float, int] | None = None  # a request paced by the rate limit: (send at, index)
        self.heard_at = now  # the last frame from it, or the first request sent into its silence

    @property
    def in_air(self) -> bool:
        """Requests sent and not answered yet."""
        outstanding = len(self.window.outstanding)
        return outstanding > (self.held is not None)

    def awaits(self, index: int) -> bool:
        """Whether a request for `index` went to the peer (one held by the rate limit did not)."""
        return index in self.window.outstanding and (self.held is None or self.held[1] != index)

    def take_outbox(self) -> list[wire.Event]:
        frames, self.outbox = self.outbox, []
        self.announce_due = None
        return frames


class Swarm:
    def __init__(
        self,
        manifest: Manifest,
        *,
        depth: int,
        max_bad: int,
        chunk_timeout: float,
        shares: bool,
        limit: TokenBucket | None = None,
        done: Iterable[int] = (),
        rng: Random | None = None,
    ) -> None:
        self.manifest = manifest
        self.raw_id = manifest.raw_id
        self.depth, self.max_bad, self.chunk_timeout = depth, max_bad, chunk_timeout
        self.shares = shares  # we serve what we verify: peers hear of it
        self.limit = limit
        self.verified: set[int] = set(done)
        # Under a download cap, endgame copies would spend the user's bandwidth on duplicates.
        self.plan = ChunkPlan(manifest.num_chunks, done=self.verified, endgame_copies=1 if limit else 2, rng=rng)
        self.sessions: dict[Peer, PeerSession] = {}
        self._endgame = False
        self._wake = False  # the plan changed so that every session may have work
        self._delivered_any = False  # a chunk was verified in this download
        self._solo_until: float | None = None  # until then, only the first chunk a reader waits for is asked
        self._urgent: list[int] = []  # the chunks readers wait for, most urgent first

    @property
    def finished(self) -> bool:
        return self.plan.finished

    # -- a peer comes and goes ---------------------------------------------------------------

    def open(self, peer: Peer, label: str, origin: bool, announces: bool, now: float) -> PeerSession:
        """A connection is up: tell the peer what we hold (so an origin offers us other chunks),
        and ask for its have-set."""
        session = PeerSession(peer, label, origin, announces, self.depth, self.max_bad, now)
        if announces and self.shares:
            session.outbox.append(wire.Have.of(self.raw_id, self.manifest.num_chunks, self.verified))
        session.outbox.append(wire.GetHave(self.raw_id))
        self.sessions[peer] = session
        if origin:
            # It holds every chunk (the tracker says so): a chunk a reader waits for may be asked
            # of it now, with no round trip for its have-set (which only says what it offers).
            self.plan.add_peer(peer, (), origin=True)
            session.ready = True
            self._fill(session, now)
        return session

    def close(self, peer: Peer, now: float) -> int:
        """The peer's connection ended: its chunks go back to the plan. Returns how many."""
        self.sessions.pop(peer, None)
        returned = len(self.plan.remove_peer(peer))
        if returned:
            self._fill_all(now)
        return returned

    # -- time --------------------------------------------------------------------------------

    def deadline(self, peer: Peer) -> float | None:
        """When this peer will have been silent too long: with requests outstanding, or before
        its have-set came."""
        session = self.sessions[peer]
        return session.heard_at + self.chunk_timeout if session.in_air or not session.have_seen else None

    def ready_at(self, peer: Peer) -> float | None:
        """When a request paced by the rate limit may go, or the first chunk's solo ends."""
        held = self.sessions[peer].held
        at = None if held is None else held[0]
        if self._solo_until is not None and (at is None or self._solo_until < at):
            return self._solo_until
        return at

    def announcements_due(self) -> float | None:
        """When the earliest announcements waiting in an outbox must go (the shell sends what
        `take_due` gives then, if no frame took them along before)."""
        return min((s.announce_due for s in self.sessions.values() if s.announce_due is not None), default=None)

    def take_due(self, peer: Peer, now: float) -> list[wire.Event]:
        """The frames to send this peer now: all that are queued, unless they are announcements
        alone that may still wait for a request to go with (ANNOUNCE_DELAY)."""
        session = self.sessions[peer]
        if not session.outbox:
            return []
        due = session.announce_due
        if due is not None and now < due and not self.finished and all(isinstance(f, wire.Announce) for f in session.outbox):
            return []
        return session.take_outbox()

    def tick(self, peer: Peer, now: float) -> list[Effect]:
        """Time passed for this peer: a paced request may go, or the peer timed out."""
        session = self.sessions[peer]
        deadline = self.deadline(peer)
        if deadline is not None and now >= deadline:
            return [self._end(session, PeerTimeout(f"{session.label} sent nothing for {self.chunk_timeout:g}s"))]
        self._fill(session, now)
        if self._wake:
            self._fill_all(now)
        return []

    # -- what the peer said ------------------------------------------------------------------

    def receive(self, peer: Peer, event: object, now: float) -> list[Effect]:
        session = self.sessions[peer]
        effects: list[Effect] = []
        if not isinstance(event, Checked):
            session.heard_at = now
        match event:
            case wire.Chunk(file_id=fid, index=index, data=data, buffer=buffer):
                if fid != self.raw_id or not session.awaits(index) or not session.window.arrived(index):
                    return [self._end(session, PeerBanned(f"{session.label} sent chunk {index}, which we did not ask for"))]
                if self.plan.is_done(index):  # endgame: another peer was faster
                    self.plan.complete(index, peer)
                    effects.append(Release(buffer))
                else:
                    session.window.verifying += 1
                    effects.append(Verify(index, data, buffer))
            case Checked(index=index, ok=ok, buffer=buffer):
                session.window.verifying -= 1
                effects.append(Release(buffer))
                if ok:
                    self._delivered(session, index, effects, now)
                else:
                    log.warning("chunk failed verification", peer=session.label, chunk=index)
                    effects.append(Rejected(index))
                    self.plan.fail(index, peer)
                    self._wake = True
                    if session.window.strike():
                        why = f"{session.label} sent {session.window.bad} chunks that failed verification"
                        effects.append(self._end(session, PeerBanned(why)))
            case wire.Have(file_id=fid, num_chunks=num_chunks) if not session.have_seen:
                num = self.manifest.num_chunks
                if fid != self.raw_id or num_chunks != num:
                    return [self._end(session, PeerBanned(f"{session.label} announced {num_chunks} chunks, the manifest has {num}"))]
                indices = event.indices()
                have = None if len(indices) == num else indices
                if session.ready:  # an origin in the plan already, maybe with chunks asked of it
                    self.plan.set_have(peer, have)
                else:
                    self.plan.add_peer(peer, have, origin=session.origin)
                session.ready = session.have_seen = True
            case wire.Announce(file_id=fid, indices=indices) if session.ready:
                if fid != self.raw_id:
                    return [self._end(session, PeerBanned(f"{session.label} announced chunks of another file"))]
                if max(indices) >= self.manifest.num_chunks:
                    why = f"{session.label} announced chunk {max(indices)} of a {self.manifest.num_chunks}-chunk file"
                    return [self._end(session, PeerBanned(why))]
                self.plan.peer_has(peer, indices)
                if session.origin:  # offers of chunks we are getting anyway
                    self._decline(session, [i for i in indices if self.plan.taken_elsewhere(i, peer)])
            case wire.Error(code=code, message=message, index=index):
                if not session.have_seen:
                    return [self._end(session, PeerBanned(f"{session.label} does not serve this file ({code.name.lower()}: {message})"))]
                if code == wire.ErrorCode.ELSEWHERE:  # an origin's "others have it": no fault of its
                    if session.awaits(index) and session.window.refused(index):
                        self.plan.elsewhere(peer, index)
                        self._wake = True
                    self._fill(session, now)
                    if self._wake:
                        self._fill_all(now)
                    return effects
                if session.awaits(index) and session.window.refused(index):
                    self.plan.fail(index, peer)
                    effects.append(Returned(1, "peer_error"))
                    self._wake = True
                if code == wire.ErrorCode.UNKNOWN_FILE:
                    effects.append(self._end(session, PeerBanned(f"{session.label} does not serve this file")))
                    return effects
                log.warning("peer refused a chunk", peer=session.label, chunk=index, code=code.name, error=message)
                if session.window.strike():
                    effects.append(self._end(session, PeerBanned(f"{session.label} refused {session.window.bad} requests")))
            case _:
                return [self._end(session, RemoteProtocolError(f"{session.label} sent an unexpected {type(event).__name__}"))]
        self._fill(session, now)
        if self._wake:
            self._fill_all(now)
        return effects

    @staticmethod
    def _end(session: PeerSession, error: PeerError | RemoteProtocolError) -> End:
        """The peer is done: until the shell closes it, no chunk is handed to it (a wake-up of
        every session must not give chunks, nor origins' DECLINEs, to a peer on its way out)."""
        session.ended = True
        return End(error)

    def _delivered(self, session: PeerSession, index: int, effects: list[Effect], now: float) -> None:
        if not self.plan.complete(index, session.peer):
            return  # an endgame copy that lost the race
        self.verified.add(index)
        if not self._delivered_any:
            self._delivered_any = True
            if self._solo_until is not None:  # the first chunk is in: everyone may ask for the rest
                self._end_solo()
        effects.append(Delivered(index, self.manifest.chunk_span(index)[1], session.origin))
        if self.shares:
            for other in self.sessions.values():
                if other.announces and other is not session:
                    _append_announce(other.outbox, self.raw_id, index)
                    if other.announce_due is None:
                        other.announce_due = now + ANNOUNCE_DELAY

    # -- what to ask for ---------------------------------------------------------------------

    def prioritize(self, indices: Iterable[int], now: float) -> None:
        """Readers wait for these chunks, in this order: ask for them first. Until the first chunk
        of the download is verified (for SOLO seconds at most), only the first is asked for: the
        first chunk a reader waits for does not share the links, and the CPU that hashes it,
        with the rest of the file."""
        self._urgent = list(indices)
        if not self._delivered_any and self._solo_until is None and self._urgent:
            self._solo_until = now + SOLO
        self.plan.prioritize(self._urgent[:1] if self._solo_until is not None else self._urgent)
        self._fill_all(now)

    def _end_solo(self) -> None:
        self._solo_until = None
        self.plan.prioritize(self._urgent)
        self._wake = True

    def _fill_all(self, now: float) -> None:
        self._wake = False
        for session in self.sessions.values():
            self._fill(session, now)

    def _fill(self, session: PeerSession, now: float) -> None:
        """Keep the session's request window full, with chunks the plan picks for this peer."""
        plan = self.plan
        if not session.ready or session.ended or plan.finished:
            return
        if session.held is not None:
            at, index = session.held
            if at > now:
                return
            session.held = None
            self._send_request(session, index, now)
        if self._solo_until is not None and now >= self._solo_until:
            self._end_solo()
        while session.window.room > 0:
            index = plan.next_chunk(session.peer, urgent_only=self._solo_until is not None)
            if index is None:
                return
            self._assigned(session, index)
            session.window.asked(index)
            if self.limit is not None:  # pace requests: the bytes follow them
                delay = self.limit.reserve(self.manifest.chunk_span(index)[1], now)
                if delay > 0:
                    session.held = (now + delay, index)
                    return
            self._send_request(session, index, now)

    def _send_request(self, session: PeerSession, index: int, now: float) -> None:
        # `index` is in the window already (asked, or held until now): if it is the only request
        # in the air, the peer was not expected to say anything before, so its silence counts
        # from now (not from its last frame, perhaps long ago, nor from before a paced wait).
        if session.window.outstanding == {index}:
            session.heard_at = now
        session.outbox.append(wire.Request(self.raw_id, index))

    def _assigned(self, session: PeerSession, index: int) -> None:
        """A chunk asked of this peer: the origins that offered it too may offer us others
        instead. Once none is left unassigned, idle sessions may start endgame copies."""
        for other in self.sessions.values():
            if other is not session and other.origin and other.ready and self.plan.holds(other.peer, index):
                self._decline(other, [index])
        if not self._endgame and not self.plan.unassigned_count:
            self._endgame = True
            self._wake = True

    def _decline(self, session: PeerSession, indices: list[int]) -> None:
        if indices and session.origin and session.announces:
            session.outbox.append(wire.Decline(self.raw_id, tuple(indices)))


def _append_announce(outbox: list[wire.Event], file_id: bytes, index: int) -> None:
    """One ANNOUNCE for the chunks verified between two flushes."""
    last = outbox[-1] if outbox else None
    if isinstance(last, wire.Announce) and last.file_id == file_id and len(last.indices) < wire.MAX_ANNOUNCED:
        outbox[-1] = wire.Announce(file_id, (*last.indices, index))
    else:
        outbox.append(wire.Announce(file_id, (index,)))
