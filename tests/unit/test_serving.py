"""What a peer server answers, without I/O: the handshake (fed from a real client side), then
each frame's answer from the sources of the moment, announcements and an origin's offers."""

import pytest

from p2p_shared import PEER_VERSION, wire
from p2p_shared.handshake import ClientHandshake
from p2p_shared.manifest import Manifest
from p2p_shared.serving import PeerState, Refuse, Send, SendChunk, SendManifest, ServingCore

CHUNK = 1000
SECRET = b"s" * 16


class Source:
    """A ChunkSource in memory: `held` None for a complete file."""

    def __init__(self, num_chunks: int = 8, held: set[int] | None = None, last: int = CHUNK, name: str = "f.bin"):
        size = (num_chunks - 1) * CHUNK + last
        self.manifest = Manifest(name, size, CHUNK, bytes(range(32)) * num_chunks)
        self.manifest_bytes = self.manifest.encode()
        self._held = held

    @property
    def raw_id(self) -> bytes:
        return self.manifest.raw_id

    @property
    def complete(self) -> bool:
        return self._held is None

    def has(self, index: int) -> bool:
        return self._held is None or index in self._held

    def held(self) -> list[int] | None:
        return None if self._held is None else sorted(self._held)

    def open(self):
        raise AssertionError("the core never opens files")

    def servable(self, handle) -> bool:
        raise AssertionError("the core never reads files")


def connect(core: ServingCore, secret: bytes | None = None, shares: bool = False) -> PeerState:
    """A connection past the handshake, the client side played by ClientHandshake."""
    state = core.connect()
    client = ClientHandshake(secret, "client", shares=shares)
    to_server = [client.hello()]
    while to_server:
        actions = [action for frame in to_server for action in core.receive(state, frame, 0.0)]
        assert all(isinstance(action, Send) for action in actions)
        to_server = [frame for action in actions for frame in client.receive(action.frame)]
    assert client.done and state.ready
    return state


def answer(core: ServingCore, state: PeerState, frame: wire.Event, now: float = 0.0) -> list:
    return core.receive(state, frame, now)


def refusal(actions: list) -> tuple[wire.ErrorCode, bool]:
    [action] = actions
    assert isinstance(action, Refuse)
    return action.error.code, action.close


def announced(state: PeerState) -> dict[bytes, list[int]]:
    """The indices queued for the peer, by file id (as the shell flushes them)."""
    out: dict[bytes, list[int]] = {}
    for frame in state.take_queued():
        out.setdefault(frame.file_id, []).extend(frame.indices)
    return out


# -- the handshake ------------------------------------------------------------------------------------


def test_handshake_without_a_secret():
    core = ServingCore(None)
    state = core.connect()
    assert not state.ready and state not in core.connections
    assert answer(core, state, ClientHandshake(None, "c").hello()) == [Send(wire.Hello(PEER_VERSION, wire.FLAG_ANNOUNCE))]
    assert state.ready and state in core.connections
    assert state.announces and not state.shares


def test_handshake_with_the_swarm_secret_and_a_sharing_client():
    core = ServingCore(SECRET)
    state = core.connect()
    client = ClientHandshake(SECRET, "c", shares=True)
    hello, proof = answer(core, state, client.hello())
    assert hello.frame.flags & wire.FLAG_AUTH and isinstance(proof.frame, wire.Auth)
    assert not state.ready  # the client has not proven the secret yet
    [auth] = client.receive(hello.frame) + client.receive(proof.frame)
    assert answer(core, state, auth) == []
    assert state.ready and state in core.connections and state.shares


def test_a_client_without_the_secret_is_refused_and_closed():
    core = ServingCore(SECRET)
    state = core.connect()
    assert refusal(answer(core, state, ClientHandshake(None, "c").hello())) == (wire.ErrorCode.UNAUTHORIZED, True)
    assert not state.ready and state not in core.connections


def test_a_client_with_a_wrong_secret_is_refused_and_closed():
    core = ServingCore(SECRET)
    state = core.connect()
    client = ClientHandshake(b"x" * 16, "c")
    hello, _ = answer(core, state, client.hello())
    client.receive(hello.frame)
    assert refusal(answer(core, state, wire.Auth(b"\0" * 32))) == (wire.ErrorCode.UNAUTHORIZED, True)
    assert not state.ready


def test_a_request_before_the_handshake_is_refused_and_closed():
    core = ServingCore(None)
    core.add(Source())
    state = core.connect()
    assert refusal(answer(core, state, wire.Request(Source().raw_id, 0))) == (wire.ErrorCode.BAD_REQUEST, True)


@pytest.mark.parametrize(
    ("flags", "announces", "shares"),
    [(0, False, False), (wire.FLAG_SHARES, False, False), (wire.FLAG_ANNOUNCE | wire.FLAG_SHARES, True, True)],
)
def test_what_the_client_said_it_understands(flags, announces, shares):
    core = ServingCore(None)
    state = core.connect()
    answer(core, state, wire.Hello(PEER_VERSION, flags))
    assert (state.announces, state.shares) == (announces, shares)  # sharing means nothing without ANNOUNCE


# -- answers ------------------------------------------------------------------------------------------


def test_a_request_is_answered_with_its_chunk_span():
    core = ServingCore(None)
    source = Source(3, last=250)
    core.add(source)
    state = connect(core)
    assert answer(core, state, wire.Request(source.raw_id, 1)) == [SendChunk(source, 1, CHUNK, CHUNK)]
    assert answer(core, state, wire.Request(source.raw_id, 2)) == [SendChunk(source, 2, 2 * CHUNK, 250)]


def test_requests_that_cannot_be_served_are_refused_with_their_code_and_the_connection_stays():
    core = ServingCore(None)
    partial = Source(4, held={0, 2})
    core.add(partial)
    state = connect(core)
    cases = [
        (wire.Request(bytes(32), 1), wire.ErrorCode.UNKNOWN_FILE),
        (wire.Request(partial.raw_id, 4), wire.ErrorCode.BAD_INDEX),
        (wire.Request(partial.raw_id, 1), wire.ErrorCode.UNAVAILABLE),
    ]
    for frame, code in cases:
        [action] = answer(core, state, frame)
        assert action == Refuse(wire.Error(code, action.error.message, frame.file_id, frame.index), close=False)
    assert answer(core, state, wire.Request(partial.raw_id, 2)) == [SendChunk(partial, 2, 2 * CHUNK, CHUNK)]


def test_the_manifest_is_sent_as_it_was_kept():
    core = ServingCore(None)
    source = Source()
    core.add(source)
    state = connect(core)
    assert answer(core, state, wire.GetManifest(source.raw_id)) == [SendManifest(source.raw_id, source.manifest_bytes)]
    assert refusal(answer(core, state, wire.GetManifest(bytes(32)))) == (wire.ErrorCode.UNKNOWN_FILE, False)


def test_the_have_set_of_a_complete_and_of_a_partial_source():
    core = ServingCore(None)
    full, partial = Source(10), Source(9, held={1, 8}, name="g.bin")
    core.add(full)
    core.add(partial)
    state = connect(core)
    assert answer(core, state, wire.GetHave(full.raw_id)) == [Send(wire.Have.full(full.raw_id, 10))]
    [have] = answer(core, state, wire.GetHave(partial.raw_id))
    assert have.frame.indices() == {1, 8} and have.frame.num_chunks == 9
    assert state.subscribed == {full.raw_id, partial.raw_id}
    assert refusal(answer(core, state, wire.GetHave(bytes(32)))) == (wire.ErrorCode.UNKNOWN_FILE, False)


def test_an_unexpected_frame_is_refused_without_closing():
    core = ServingCore(None)
    state = connect(core)
    assert refusal(answer(core, state, wire.Hello(PEER_VERSION))) == (wire.ErrorCode.BAD_REQUEST, False)


@pytest.mark.parametrize(
    "frame",
    [
        lambda fid: wire.Have.full(fid, 7),  # of the wrong length
        lambda fid: wire.Announce(fid, (1, 8)),  # past the end
        lambda fid: wire.Decline(fid, (8,)),
    ],
)
def test_what_a_downloader_says_it_holds_must_fit_the_file_or_the_connection_closes(frame):
    core = ServingCore(None)
    source = Source(8)
    core.add(source)
    state = connect(core, shares=True)
    assert refusal(answer(core, state, frame(source.raw_id))) == (wire.ErrorCode.BAD_REQUEST, True)


# -- super-seeding: an origin's offers ----------------------------------------------------------------


def origin(num_chunks: int = 32) -> tuple[ServingCore, Source]:
    core = ServingCore(None)
    source = Source(num_chunks)
    core.add(source, super_seed=True)
    return core, source


def test_an_origin_shows_a_sharing_downloader_only_its_offers_and_a_plain_one_everything():
    core, source = origin()
    sharer = connect(core, shares=True)
    [have] = answer(core, sharer, wire.GetHave(source.raw_id))
    offers = have.frame.indices()
    assert len(offers) == 4  # the offer window
    plain = connect(core, shares=False)
    assert answer(core, plain, wire.GetHave(source.raw_id)) == [Send(wire.Have.full(source.raw_id, 32))]
    other = connect(core, shares=True)
    [have] = answer(core, other, wire.GetHave(source.raw_id))
    assert not have.frame.indices() & offers  # offered to one downloader at a time


def test_an_origin_sends_an_unoffered_chunk_no_one_has_and_sends_the_next_asker_elsewhere():
    core, source = origin()
    first, second = connect(core, shares=True), connect(core, shares=True)
    offered = set()
    for state in (first, second):
        [have] = answer(core, state, wire.GetHave(source.raw_id))
        offered |= have.frame.indices()
    wanted = min(set(range(32)) - offered)  # a streaming reader's next chunk, offered to no one
    [send] = answer(core, first, wire.Request(source.raw_id, wanted))
    assert isinstance(send, SendChunk) and send.index == wanted
    assert refusal(answer(core, second, wire.Request(source.raw_id, wanted))) == (wire.ErrorCode.ELSEWHERE, False)
    plain = connect(core, shares=False)  # a downloader that does not share may have anything
    assert isinstance(answer(core, plain, wire.Request(source.raw_id, wanted))[0], SendChunk)


def test_a_have_sent_before_get_have_keeps_those_chunks_out_of_the_first_offers():
    core, source = origin(6)
    state = connect(core, shares=True)
    assert answer(core, state, wire.Have.of(source.raw_id, 6, {0, 1, 2, 3})) == []
    [have] = answer(core, state, wire.GetHave(source.raw_id))
    assert have.frame.indices() == {4, 5}


def test_chunk_sent_tops_up_the_offers_of_a_sharing_downloader_only():
    core, source = origin()
    state = connect(core, shares=True)
    [have] = answer(core, state, wire.GetHave(source.raw_id))
    offers = sorted(have.frame.indices())
    core.chunk_sent(state, source.raw_id, offers[0], 1.0)
    [(fid, [new])] = announced(state).items()
    assert fid == source.raw_id and new not in offers
    plain = connect(core)
    answer(core, plain, wire.GetHave(source.raw_id))
    core.chunk_sent(plain, source.raw_id, 5, 1.0)
    assert announced(plain) == {}


def test_a_declined_or_announced_chunk_is_replaced_by_a_new_offer():
    core, source = origin()
    state = connect(core, shares=True)
    [have] = answer(core, state, wire.GetHave(source.raw_id))
    offers = sorted(have.frame.indices())
    assert answer(core, state, wire.Decline(source.raw_id, (offers[0],))) == []
    [declined_for] = announced(state)[source.raw_id]
    assert answer(core, state, wire.Announce(source.raw_id, (offers[1],))) == []
    [announced_for] = announced(state)[source.raw_id]
    assert len({declined_for, announced_for} | set(offers)) == 6


def test_offers_of_a_downloader_that_leaves_go_to_the_next():
    core, source = origin(12)
    stays = connect(core, shares=True)
    answer(core, stays, wire.GetHave(source.raw_id))
    first = connect(core, shares=True)
    [have] = answer(core, first, wire.GetHave(source.raw_id))
    core.disconnect(first)  # (were it the last, the next swarm would start a new walk)
    assert first not in core.connections
    second = connect(core, shares=True)
    assert answer(core, second, wire.GetHave(source.raw_id)) == [have]


def test_stale_offers_are_topped_up_with_time():
    core, source = origin(2)
    hoarder = connect(core, shares=True)
    answer(core, hoarder, wire.GetHave(source.raw_id), now=0.0)  # takes both chunks on offer, and nothing else
    late = connect(core, shares=True)
    [have] = answer(core, late, wire.GetHave(source.raw_id), now=1.0)
    assert have.frame.indices() == set()
    assert core.top_up_offers(5.0) == []
    assert core.top_up_offers(12.0) == [late]  # the hoarder took nothing for 10 s: its offers are free
    assert sorted(announced(late)[source.raw_id]) == [0, 1]


# -- announcements and sources that come and go -------------------------------------------------------


def test_announce_queues_only_to_subscribed_connections_that_understand_announce():
    core = ServingCore(None)
    source = Source(8, held={0})
    core.add(source)
    follower, stranger, deaf = connect(core), connect(core), core.connect()
    answer(core, deaf, wire.Hello(PEER_VERSION, 0))
    answer(core, follower, wire.GetHave(source.raw_id))
    answer(core, deaf, wire.GetHave(source.raw_id))
    assert core.announce(source.raw_id, 3) == [follower]
    assert core.announce(source.raw_id, 5) == [follower]
    assert follower.take_queued() == [wire.Announce(source.raw_id, (3, 5))]  # one frame between flushes
    assert stranger.take_queued() == [] and deaf.take_queued() == []
    core.disconnect(follower)
    assert core.announce(source.raw_id, 6) == []


def test_a_removed_file_is_unknown_and_its_queued_announcements_are_dropped():
    core = ServingCore(None)
    source, other = Source(8, held={0}), Source(4, name="g.bin")
    core.add(source)
    core.add(other)
    state = connect(core)
    answer(core, state, wire.GetHave(source.raw_id))
    answer(core, state, wire.GetHave(other.raw_id))
    core.announce(source.raw_id, 1)
    core.announce(other.raw_id, 2)
    assert core.remove(source.raw_id) is source
    assert state.take_queued() == [wire.Announce(other.raw_id, (2,))]
    assert refusal(answer(core, state, wire.Request(source.raw_id, 0))) == (wire.ErrorCode.UNKNOWN_FILE, False)
    assert core.announce(source.raw_id, 3) == []  # no one follows it any more
    assert core.remove(source.raw_id) is None


def test_a_removed_origin_file_makes_no_more_offers():
    core, source = origin()
    state = connect(core, shares=True)
    answer(core, state, wire.GetHave(source.raw_id))
    core.remove(source.raw_id)
    assert not core.offering
    core.chunk_sent(state, source.raw_id, 0, 1.0)
    assert core.top_up_offers(100.0) == [] and state.take_queued() == []


def test_a_file_added_again_without_super_seed_shows_its_whole_have_set():
    core, source = origin(8)
    core.add(source)  # served plainly now
    state = connect(core, shares=True)
    assert answer(core, state, wire.GetHave(source.raw_id)) == [Send(wire.Have.full(source.raw_id, 8))]
