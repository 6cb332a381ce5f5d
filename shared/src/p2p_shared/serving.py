"""What a peer server answers, without I/O: the handshake, then each request of each connection.

`ServingCore` holds the files served (ChunkSource: a complete file, or a part file growing as
chunks are verified), added and removed while the server runs, and, for an origin, the offers
of each file (p2p_shared.offers). The shell feeds it one frame of one connection at a time
(`receive(conn, event, now)`) and carries out the actions it returns: frames to write, a
manifest or a chunk payload to send, a refusal (counted by code; some close the connection).

Peers that said they understand ANNOUNCE hear of chunks as they become available: a download's
newly verified chunks (`announce`), or an origin's next offers. Announcements wait in the
connection's queue while a payload is in flight and go right after it (`PeerState.take_queued`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import wire
from .errors import HandshakeRefused, Refusal
from .handshake import ServerHandshake
from .offers import OfferBook
from .source import ChunkSource


@dataclass(slots=True)
class Send:
    frame: wire.Event


@dataclass(slots=True)
class SendManifest:
    file_id: bytes
    body: bytes


@dataclass(slots=True)
class SendChunk:
    source: ChunkSource
    index: int
    offset: int
    length: int


@dataclass(slots=True)
class Refuse:
    """Answer with this error; then close the connection, if `close`."""

    error: wire.Error
    close: bool = False


Action = Send | SendManifest | SendChunk | Refuse


class PeerState:
    """One connection's side of the conversation: its handshake, what it subscribed to, and the
    announcements waiting for a frame boundary."""

    __slots__ = ("handshake", "announces", "shares", "subscribed", "in_payload", "queued", "early_holds", "shell")

    def __init__(self, secret: bytes | None) -> None:
        self.handshake = ServerHandshake(secret)
        self.announces = False  # the peer understands ANNOUNCE
        self.shares = False  # the peer serves what it downloads: an origin hands it offers
        self.subscribed: set[bytes] = set()  # file ids it asked the have-set of
        self.in_payload = False
        self.queued: dict[bytes, list[int]] = {}
        self.early_holds: dict[bytes, set[int]] = {}  # a HAVE sent before its GET_HAVE
        self.shell: object = None  # the I/O shell's own object for this connection

    @property
    def ready(self) -> bool:
        return self.handshake.done

    def queue(self, file_id: bytes, indices: Iterable[int]) -> bool:
        """Announce these chunks, if the peer follows the file; True if something is queued."""
        indices = list(indices)
        if not indices or not self.announces or file_id not in self.subscribed:
            return False
        self.queued.setdefault(file_id, []).extend(indices)
        return True

    def take_queued(self) -> list[wire.Announce]:
        frames = [
            wire.Announce(file_id, tuple(indices[start : start + wire.MAX_ANNOUNCED]))
            for file_id, indices in self.queued.items()
            for start in range(0, len(indices), wire.MAX_ANNOUNCED)
        ]
        self.queued.clear()
        return frames


class ServingCore:
    def __init__(self, secret: bytes | None) -> None:
        self.secret = secret
        self.sources: dict[bytes, ChunkSource] = {}
        self._offers: dict[bytes, OfferBook] = {}
        self.connections: set[PeerState] = set()  # past their handshake

    # -- the files served ----------------------------------------------------------------------

    def add(self, source: ChunkSource, super_seed: bool = False) -> None:
        """Serve `source`; `super_seed`: offer each announce-capable downloader only a few chunks
        at a time, for an origin whose upload must not be spent twice on one chunk."""
        self.sources[source.raw_id] = source
        if super_seed:
            self._offers[source.raw_id] = OfferBook(source.manifest.num_chunks, order_key=source.raw_id)
        else:
            self._offers.pop(source.raw_id, None)

    def remove(self, file_id: bytes) -> ChunkSource | None:
        """Serve this file no more: later requests for it are refused as unknown."""
        self._offers.pop(file_id, None)
        for state in self.connections:
            state.subscribed.discard(file_id)
            state.queued.pop(file_id, None)
            state.early_holds.pop(file_id, None)
        return self.sources.pop(file_id, None)

    def announce(self, file_id: bytes, index: int) -> list[PeerState]:
        """A chunk of `file_id` became available here: the connections that now have an
        announcement queued."""
        return [state for state in self.connections if state.queue(file_id, (index,))]

    def top_up_offers(self, now: float) -> list[PeerState]:
        """An origin's offers held by downloaders that stopped taking chunks go stale with time,
        not with traffic: the connections with new offers queued."""
        touched = []
        for file_id, book in self._offers.items():
            for state, new in book.top_up_all(now).items():
                if state.queue(file_id, new):  # type: ignore[union-attr]
                    touched.append(state)
        return touched

    @property
    def offering(self) -> bool:
        return bool(self._offers)

    # -- connections ---------------------------------------------------------------------------

    def connect(self) -> PeerState:
        return PeerState(self.secret)

    def disconnect(self, state: PeerState) -> None:
        self.connections.discard(state)
        for book in self._offers.values():
            book.leave(state)

    def receive(self, state: PeerState, event: wire.Event, now: float) -> list[Action]:
        """The answer to one frame. A bad handshake is refused and closes the connection."""
        if not state.handshake.done:
            try:
                frames = state.handshake.receive(event)
            except HandshakeRefused as refusal:
                return [Refuse(refusal.error, close=True)]
            if state.handshake.done:
                flags = state.handshake.peer_flags
                state.announces = bool(flags & wire.FLAG_ANNOUNCE)
                state.shares = state.announces and bool(flags & wire.FLAG_SHARES)
                self.connections.add(state)
            return [Send(frame) for frame in frames]
        try:
            return self._answer(state, event, now)
        except Refusal as refused:
            error = wire.Error(refused.code, str(refused), refused.file_id, refused.index)
            return [Refuse(error, refused.close)]

    def _answer(self, state: PeerState, event: wire.Event, now: float) -> list[Action]:
        match event:
            case wire.Request(file_id, index):
                source = self._source(file_id, index)
                if not 0 <= index < source.manifest.num_chunks:
                    raise Refusal(wire.ErrorCode.BAD_INDEX, "chunk index out of range", file_id, index)
                if not source.has(index):
                    raise Refusal(wire.ErrorCode.UNAVAILABLE, "chunk not held here", file_id, index)
                book = self._offers.get(file_id)
                if book is not None and state.shares and not book.claim(state, index):
                    # Not offered to it, and other downloaders have it: our upload goes to new chunks.
                    raise Refusal(wire.ErrorCode.ELSEWHERE, "the peers that hold it have it", file_id, index)
                offset, length = source.manifest.chunk_span(index)
                return [SendChunk(source, index, offset, length)]
            case wire.GetManifest(file_id):
                return [SendManifest(file_id, self._source(file_id).manifest_bytes)]
            case wire.GetHave(file_id):
                source = self._source(file_id)
                state.subscribed.add(file_id)
                book = self._offers.get(file_id)
                num = source.manifest.num_chunks
                if book is not None and state.shares:
                    have = wire.Have.of(file_id, num, book.join(state, now, state.early_holds.pop(file_id, ())))
                elif (held := source.held()) is None:
                    have = wire.Have.full(file_id, num)
                else:
                    have = wire.Have.of(file_id, num, held)
                return [Send(have)]
            case wire.Have(file_id, num_chunks):
                source = self._source(file_id)
                if num_chunks != source.manifest.num_chunks:
                    raise Refusal(wire.ErrorCode.BAD_REQUEST, "HAVE of the wrong length", file_id, close=True)
                self._downloader_holds(state, file_id, event.indices(), now)
                return []
            case wire.Announce(file_id, indices):
                self._check_indices(self._source(file_id), indices)
                self._downloader_holds(state, file_id, indices, now)
                return []
            case wire.Decline(file_id, indices):
                self._check_indices(self._source(file_id), indices)
                book = self._offers.get(file_id)
                if book is not None and state.shares:
                    state.queue(file_id, book.decline(state, indices, now))
                return []
        raise Refusal(wire.ErrorCode.BAD_REQUEST, f"unexpected {type(event).__name__} frame")

    def chunk_sent(self, state: PeerState, file_id: bytes, index: int, now: float) -> None:
        """A chunk went out to this downloader: an origin offers it another."""
        book = self._offers.get(file_id)
        if book is not None and state.shares:
            state.queue(file_id, book.sent(state, index, now))

    def _source(self, file_id: bytes, index: int = 0) -> ChunkSource:
        source = self.sources.get(file_id)
        if source is None:
            raise Refusal(wire.ErrorCode.UNKNOWN_FILE, "no such file here", file_id, index)
        return source

    def _downloader_holds(self, state: PeerState, file_id: bytes, indices: Iterable[int], now: float) -> None:
        """What a downloader holds (its HAVE, then ANNOUNCEs): an origin offers it other chunks."""
        book = self._offers.get(file_id)
        if book is None or not state.shares:
            return
        if book.joined(state):
            state.queue(file_id, book.holds(state, indices, now))
        else:
            state.early_holds.setdefault(file_id, set()).update(indices)

    @staticmethod
    def _check_indices(source: ChunkSource, indices: Iterable[int]) -> None:
        if any(not 0 <= i < source.manifest.num_chunks for i in indices):
            raise Refusal(wire.ErrorCode.BAD_REQUEST, "chunk index out of range", source.raw_id, close=True)

