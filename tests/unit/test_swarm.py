"""One download's conversations with its peers, without I/O: frames and verdicts in, effects and
queued frames out, on a fake clock (plain floats as `now`)."""

import pytest

from p2p_shared import wire
from p2p_shared.errors import PeerBanned, PeerTimeout, RemoteProtocolError
from p2p_shared.manifest import Manifest
from p2p_shared.ratelimit import TokenBucket
from p2p_shared.swarm import ANNOUNCE_DELAY, Checked, Delivered, End, Rejected, Release, Returned, Swarm, Verify

CHUNK = 1000
TIMEOUT = 30.0


def manifest(num_chunks: int, last: int = CHUNK) -> Manifest:
    """A file of `num_chunks` chunks, the last one `last` bytes long (digests are never checked here)."""
    return Manifest("file.bin", (num_chunks - 1) * CHUNK + last, CHUNK, bytes(range(32)) * num_chunks)


def swarm(num_chunks: int = 4, *, depth: int = 2, max_bad: int = 3, shares: bool = True, **kwargs) -> Swarm:
    return Swarm(manifest(num_chunks), depth=depth, max_bad=max_bad, chunk_timeout=TIMEOUT, shares=shares, **kwargs)


def outbox(s: Swarm, peer) -> list:
    """The frames queued for `peer` since the last call (as the shell's flush takes them)."""
    return s.sessions[peer].take_outbox()


def requests(s: Swarm, peer) -> list[int]:
    return [frame.index for frame in outbox(s, peer) if isinstance(frame, wire.Request)]


def join(s: Swarm, peer, have=None, *, origin=False, announces=True, now=0.0) -> list[int]:
    """Open a session and feed it the peer's HAVE (None: every chunk); the chunks it asked for."""
    s.open(peer, peer, origin, announces, now)
    outbox(s, peer)
    num = s.manifest.num_chunks
    frame = wire.Have.full(s.raw_id, num) if have is None else wire.Have.of(s.raw_id, num, have)
    assert s.receive(peer, frame, now) == []
    return requests(s, peer)


def chunk(s: Swarm, index: int, file_id: bytes | None = None) -> wire.Chunk:
    buffer = bytearray(s.manifest.chunk_span(index)[1])
    return wire.Chunk(file_id or s.raw_id, index, memoryview(buffer), buffer)


def deliver(s: Swarm, peer, index: int, now: float = 0.0, ok: bool = True) -> list:
    """The peer sends chunk `index` and the shell's hash says `ok`: the effects of the verdict."""
    frame = chunk(s, index)
    [verify] = s.receive(peer, frame, now)
    assert verify == Verify(index, frame.data, frame.buffer)
    return s.receive(peer, Checked(index, ok, frame.buffer), now)


def ended(effects: list) -> BaseException | None:
    """The error that ends the peer, if any: one End, after every other effect."""
    errors = [e.error for e in effects if isinstance(e, End)]
    assert len(errors) <= 1 and (not errors or isinstance(effects[-1], End))
    return errors[0] if errors else None


# -- the first frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "announces", "have_first"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_a_session_opens_with_our_have_only_when_we_share_and_the_peer_announces(shares, announces, have_first):
    s = swarm(10, shares=shares, done={1, 9})
    s.open("a", "a", False, announces, 0.0)
    frames = outbox(s, "a")
    assert frames[-1] == wire.GetHave(s.raw_id)
    if have_first:
        assert frames == [wire.Have.of(s.raw_id, 10, {1, 9}), wire.GetHave(s.raw_id)]
    else:
        assert frames == [wire.GetHave(s.raw_id)]


def test_nothing_is_requested_before_the_have_set():
    s = swarm()
    s.open("a", "a", False, True, 0.0)
    outbox(s, "a")
    assert s.tick("a", 1.0) == [] and requests(s, "a") == []


def test_after_the_have_set_requests_fill_the_window_up_to_depth():
    s = swarm(8, depth=3)
    asked = join(s, "a")
    assert len(asked) == len(set(asked)) == 3
    frame = chunk(s, asked[0])
    assert s.receive("a", frame, 1.0) == [Verify(asked[0], frame.data, frame.buffer)]
    assert requests(s, "a") == []  # a chunk being verified still takes its place in the window
    effects = s.receive("a", Checked(asked[0], True, frame.buffer), 1.0)
    assert effects == [Release(frame.buffer), Delivered(asked[0], CHUNK, False)]
    [more] = requests(s, "a")
    assert more not in asked


def test_a_partial_holder_is_asked_only_for_what_it_announced_then_for_what_it_announces_later():
    s = swarm(8, depth=4)
    assert sorted(join(s, "a", {2, 5})) == [2, 5]
    assert s.receive("a", wire.Announce(s.raw_id, (7,)), 1.0) == []
    assert requests(s, "a") == [7]


# -- chunks and verdicts ---------------------------------------------------------------------------


def test_announcements_alone_wait_for_a_request_to_go_with_until_they_are_due():
    s = swarm(8, depth=1)
    [asked_a] = join(s, "a", {0, 1, 2, 3}, origin=True)
    [asked_b] = join(s, "b", {4, 5, 6, 7})
    deliver(s, "a", asked_a, now=1.0)  # a gets its next request; b has announcements alone
    assert s.announcements_due() == 1.0 + ANNOUNCE_DELAY
    assert s.take_due("b", 1.0 + ANNOUNCE_DELAY / 2) == []  # they may wait, and stay queued
    [frame] = s.take_due("a", 1.0)
    assert isinstance(frame, wire.Request)
    deliver(s, "b", asked_b, now=1.01)  # b's next request takes them along, in the same write
    assert s.take_due("b", 1.01) == [wire.Announce(s.raw_id, (asked_a,)), wire.Request(s.raw_id, frame_index(s, "b"))]
    assert s.announcements_due() == 1.01 + ANNOUNCE_DELAY  # a's announcement of b's chunk
    assert s.take_due("a", 1.01 + ANNOUNCE_DELAY) == [wire.Announce(s.raw_id, (asked_b,))]  # due: alone
    assert s.announcements_due() is None


def frame_index(s: Swarm, peer) -> int:
    """The chunk of the request outstanding to `peer` (depth 1)."""
    [index] = s.sessions[peer].window.outstanding
    return index


def test_a_chunk_not_asked_for_ends_the_peer():
    s = swarm(4, depth=1)
    [asked] = join(s, "a")
    other = (asked + 1) % 4
    assert isinstance(ended(s.receive("a", chunk(s, other), 1.0)), PeerBanned)
    s2 = swarm(4, depth=1)
    [asked] = join(s2, "a")
    assert isinstance(ended(s2.receive("a", chunk(s2, asked, file_id=bytes(32)), 1.0)), PeerBanned)


def test_a_verified_chunk_is_delivered_and_announced_to_every_announcing_session_coalesced():
    s = swarm(6, depth=2)  # 4 and 5 held by no one: no endgame copies here
    a = join(s, "a", {0, 1}, origin=True)
    b = join(s, "b", {2, 3})
    assert join(s, "quiet", {0}, announces=False) == []
    assert sorted(a) == [0, 1] and sorted(b) == [2, 3]
    assert deliver(s, "a", 0)[1:] == [Delivered(0, CHUNK, True)]  # from an origin
    assert deliver(s, "a", 1)[1:] == [Delivered(1, CHUNK, True)]
    # b's window is full: its queue holds one ANNOUNCE of both chunks; a, which sent them, is not told
    assert outbox(s, "b") == [wire.Announce(s.raw_id, (0, 1))]
    assert [f for f in outbox(s, "a") if isinstance(f, wire.Announce)] == []
    assert outbox(s, "quiet") == []  # it does not understand ANNOUNCE
    assert deliver(s, "b", 2)[1:] == [Delivered(2, CHUNK, False)]
    assert outbox(s, "a") == [wire.Announce(s.raw_id, (2,))]  # a new ANNOUNCE after a flush
    assert s.verified == {0, 1, 2}


def test_the_last_chunk_is_delivered_with_its_own_length():
    s = Swarm(manifest(3, last=250), depth=3, max_bad=3, chunk_timeout=TIMEOUT, shares=False)
    join(s, "a")
    assert deliver(s, "a", 2)[1:] == [Delivered(2, 250, False)]


def test_a_download_that_does_not_share_announces_nothing():
    s = swarm(4, depth=2, shares=False)
    join(s, "a", {0, 1})
    join(s, "b", {2, 3})
    deliver(s, "a", 0)
    assert not [f for p in ("a", "b") for f in outbox(s, p) if isinstance(f, wire.Announce)]


def test_a_chunk_that_fails_verification_goes_to_another_holder_not_back_to_the_same_one():
    s = swarm(3, depth=1)
    [x] = join(s, "a")
    [y] = join(s, "b")
    frame = chunk(s, x)
    s.receive("a", frame, 1.0)
    assert s.receive("a", Checked(x, False, frame.buffer), 1.0) == [Release(frame.buffer), Rejected(x)]
    [z] = requests(s, "a")
    assert z not in (x, y)  # not x again: b holds it and has not failed it
    deliver(s, "b", y)
    assert requests(s, "b") == [x]  # the failed chunk goes first to the other holder


def test_max_bad_chunks_that_fail_verification_end_the_peer():
    s = swarm(4, depth=1, max_bad=2)
    [x] = join(s, "a")
    join(s, "b")
    assert ended(deliver(s, "a", x, ok=False)) is None
    [z] = requests(s, "a")
    effects = deliver(s, "a", z, ok=False)
    assert Rejected(z) in effects and isinstance(ended(effects), PeerBanned)


def test_a_peer_that_is_ended_is_asked_for_nothing_more():
    s = swarm(4, depth=1, max_bad=1)
    [x] = join(s, "a")
    [y] = join(s, "b")
    effects = deliver(s, "a", x, ok=False)
    assert isinstance(ended(effects), PeerBanned)
    assert requests(s, "a") == [] and s.plan.assigned("a") == set()
    assert s.close("a", 1.0) == 0  # nothing handed to it after its end goes back
    deliver(s, "b", y)
    assert requests(s, "b") == [x]


# -- endgame ------------------------------------------------------------------------------------


def test_once_nothing_is_unassigned_an_idle_session_gets_a_copy_and_the_late_copy_is_released():
    s = swarm(3, depth=2)
    assert sorted(join(s, "a", {0, 1})) == [0, 1]
    assert join(s, "c", {0}) == []  # 0 is a's; 2 is unassigned, so no copy yet
    assert join(s, "b", {2}) == [2]  # the last unassigned chunk: endgame
    assert requests(s, "c") == [0]  # the idle session is woken for a copy of a's chunk
    assert deliver(s, "c", 0)[1:] == [Delivered(0, CHUNK, False)]
    late = chunk(s, 0)
    assert s.receive("a", late, 2.0) == [Release(late.buffer)]  # not verified, not delivered again
    assert s.verified == {0}


def test_two_endgame_copies_both_verified_count_once():
    s = swarm(1, depth=1)
    assert join(s, "a") == [0]
    assert join(s, "b") == [0]  # nothing unassigned: a second copy
    first, second = chunk(s, 0), chunk(s, 0)
    s.receive("a", first, 1.0)
    s.receive("b", second, 1.0)
    assert s.receive("a", Checked(0, True, first.buffer), 1.0) == [Release(first.buffer), Delivered(0, CHUNK, False)]
    assert s.receive("b", Checked(0, True, second.buffer), 1.0) == [Release(second.buffer)]
    assert s.finished


def test_under_a_download_limit_there_are_no_endgame_copies():
    s = swarm(1, depth=1, limit=TokenBucket(10**9, 0.0))
    assert join(s, "a") == [0]
    assert join(s, "b") == []


# -- errors and announcements from the peer --------------------------------------------------------


def test_an_error_for_a_requested_chunk_returns_it_to_the_plan_for_another_holder():
    s = swarm(3, depth=1)
    [x] = join(s, "a")
    [y] = join(s, "b")
    [z] = {0, 1, 2} - {x, y}
    error = wire.Error(wire.ErrorCode.UNAVAILABLE, "not here", s.raw_id, x)
    assert s.receive("a", error, 1.0) == [Returned(1, "peer_error")]
    assert requests(s, "a") == [z]  # not x again while b may serve it
    assert s.plan.assigned("a") == {z}
    deliver(s, "b", y)
    assert requests(s, "b") == [x]


def test_refusals_count_as_strikes():
    s = swarm(4, depth=1, max_bad=2)
    [x] = join(s, "a")
    assert s.receive("a", wire.Error(wire.ErrorCode.UNAVAILABLE, "no", s.raw_id, 99), 1.0) == []  # not ours: no return
    effects = s.receive("a", wire.Error(wire.ErrorCode.UNAVAILABLE, "no", s.raw_id, x), 1.0)
    assert effects[0] == Returned(1, "peer_error") and isinstance(ended(effects), PeerBanned)


def test_unknown_file_ends_the_peer_before_and_after_its_have_set():
    s = swarm(4, depth=1)
    [x] = join(s, "a")
    effects = s.receive("a", wire.Error(wire.ErrorCode.UNKNOWN_FILE, "gone", s.raw_id, x), 1.0)
    assert effects[0] == Returned(1, "peer_error") and isinstance(ended(effects), PeerBanned)
    s.open("b", "b", False, True, 0.0)
    assert isinstance(ended(s.receive("b", wire.Error(wire.ErrorCode.UNKNOWN_FILE, "no"), 1.0)), PeerBanned)


def test_any_error_instead_of_the_have_set_ends_the_peer():
    s = swarm(4, max_bad=3)
    s.open("a", "a", False, True, 0.0)
    assert isinstance(ended(s.receive("a", wire.Error(wire.ErrorCode.UNAVAILABLE, "busy"), 1.0)), PeerBanned)


@pytest.mark.parametrize(
    "have",
    [
        lambda s: wire.Have.full(s.raw_id, 5),  # of another length
        lambda s: wire.Have.full(bytes(32), 4),  # of another file
    ],
)
def test_a_have_set_that_does_not_fit_the_manifest_ends_the_peer(have):
    s = swarm(4)
    s.open("a", "a", False, True, 0.0)
    assert isinstance(ended(s.receive("a", have(s), 0.0)), PeerBanned)


@pytest.mark.parametrize("indices", [(1, 4), (1000,)])
def test_an_announce_past_the_end_of_the_file_ends_the_peer(indices):
    s = swarm(4)
    join(s, "a", {0})
    assert isinstance(ended(s.receive("a", wire.Announce(s.raw_id, indices), 1.0)), PeerBanned)


def test_an_announce_of_another_file_ends_the_peer():
    s = swarm(4)
    join(s, "a", {0})
    assert isinstance(ended(s.receive("a", wire.Announce(bytes(32), (1,)), 1.0)), PeerBanned)


@pytest.mark.parametrize("frame", [wire.Request(bytes(32), 0), wire.Hello(1), wire.Announce(bytes(32), (0,))])
def test_a_frame_a_server_does_not_send_breaks_the_protocol(frame):
    s = swarm(4)
    s.open("a", "a", False, True, 0.0)  # (an ANNOUNCE before the HAVE too)
    assert isinstance(ended(s.receive("a", frame, 0.0)), RemoteProtocolError)


def test_a_second_have_set_breaks_the_protocol():
    s = swarm(4)
    join(s, "a")
    assert isinstance(ended(s.receive("a", wire.Have.full(s.raw_id, 4), 1.0)), RemoteProtocolError)


# -- origins: offers declined ------------------------------------------------------------------------


def test_an_origin_hears_decline_of_announced_chunks_that_come_from_elsewhere():
    s = swarm(4, depth=2)
    assert sorted(join(s, "origin", {0, 1}, origin=True)) == [0, 1]
    assert outbox(s, "origin") == []
    # The origin offered 0 and 1; now it offers 2, which a partial holder sends us already.
    assert join(s, "leecher", {2}) == [2]
    s.receive("origin", wire.Announce(s.raw_id, (2, 3)), 1.0)
    assert outbox(s, "origin") == [wire.Decline(s.raw_id, (2,))]  # 3 we have from no one: no decline


def test_an_origin_hears_decline_when_a_chunk_it_offered_is_asked_of_another_peer():
    s = swarm(4, depth=1)
    [r] = join(s, "origin", {0, 1}, origin=True)
    assert join(s, "leecher", {0, 1}) == [1 - r]  # the origin's other offer
    assert outbox(s, "origin") == [wire.Decline(s.raw_id, (1 - r,))]
    assert outbox(s, "leecher") == []  # only origins hear of it


def test_an_origin_that_does_not_announce_hears_no_decline():
    s = swarm(4, depth=1)
    [r] = join(s, "origin", {0, 1}, origin=True, announces=False)
    assert join(s, "leecher", {0, 1}) == [1 - r]
    s.receive("origin", wire.Announce(s.raw_id, (1 - r,)), 1.0)
    assert outbox(s, "origin") == []


# -- time: the download limit, silent peers ------------------------------------------------------


def test_a_request_over_the_download_limit_waits_until_ready_at():
    # 1000 bytes a second, a burst of one chunk: the second request may go 1 s later.
    s = swarm(4, depth=2, limit=TokenBucket(1000, 0.0, burst=CHUNK))
    [first] = join(s, "a")
    assert s.ready_at("a") == pytest.approx(1.0)
    assert s.tick("a", 0.5) == [] and requests(s, "a") == []
    assert s.tick("a", 1.0) == []
    [second] = requests(s, "a")
    assert second != first and s.ready_at("a") is None


def test_a_held_request_is_not_in_the_air_and_a_silent_peer_times_out():
    s = swarm(4, depth=1, limit=TokenBucket(1000, 0.0, burst=CHUNK / 2))
    assert join(s, "a", now=0.0) == []  # held at once: 500 bytes short
    assert s.deadline("a") is None  # nothing asked of the peer yet: it cannot be late
    assert s.tick("a", 0.5) == []
    assert len(requests(s, "a")) == 1
    assert s.deadline("a") == pytest.approx(0.5 + TIMEOUT)
    assert s.tick("a", 0.5 + TIMEOUT - 1) == []
    assert isinstance(ended(s.tick("a", 0.5 + TIMEOUT)), PeerTimeout)


def test_a_request_sent_after_a_long_hold_gets_a_full_timeout():
    s = swarm(4, depth=1, limit=TokenBucket(10, 0.0, burst=10))  # 99 s for a chunk
    assert join(s, "a", now=0.0) == []
    at = s.ready_at("a")
    assert at > TIMEOUT
    assert s.tick("a", at) == [] and len(requests(s, "a")) == 1
    assert s.deadline("a") == pytest.approx(at + TIMEOUT)  # counted from the request, not the HAVE
    assert s.tick("a", at + 1) == []


def test_a_chunk_or_a_refusal_for_a_request_still_held_was_not_asked_for():
    s = swarm(4, depth=1, limit=TokenBucket(1000, 0.0, burst=CHUNK / 2))
    assert join(s, "a") == []
    [(_, held)] = [s.sessions["a"].held]
    assert isinstance(ended(s.receive("a", chunk(s, held), 0.1)), PeerBanned)
    s = swarm(4, depth=1, max_bad=3, limit=TokenBucket(1000, 0.0, burst=CHUNK / 2))
    assert join(s, "a") == []
    [(_, held)] = [s.sessions["a"].held]
    assert s.receive("a", wire.Error(wire.ErrorCode.BAD_REQUEST, "?", s.raw_id, held), 0.1) == []  # not a refusal of ours
    assert s.plan.assigned("a") == {held}
    s.tick("a", 0.5)
    assert requests(s, "a") == [held]  # the request goes as planned, and its chunk is welcome
    assert isinstance(s.receive("a", chunk(s, held), 1.0)[0], Verify)


def test_a_frame_from_the_peer_puts_its_deadline_back():
    s = swarm(4, depth=2)
    asked = join(s, "a", now=0.0)
    assert s.deadline("a") == TIMEOUT
    s.receive("a", chunk(s, asked[0]), 10.0)
    assert s.deadline("a") == 10.0 + TIMEOUT
    assert s.tick("a", TIMEOUT) == []


def test_a_verdict_is_not_a_frame_from_the_peer():
    s = swarm(4, depth=2)
    x, y = join(s, "a", now=0.0)
    frame = chunk(s, x)
    s.receive("a", frame, 1.0)
    s.receive("a", Checked(x, True, frame.buffer), 20.0)  # y is still in the air
    assert s.deadline("a") == 1.0 + TIMEOUT
    assert isinstance(ended(s.tick("a", 1.0 + TIMEOUT)), PeerTimeout)


def test_an_idle_peer_asked_again_gets_a_full_timeout_from_the_request():
    s = swarm(3, depth=1)  # chunk 2 is held by no one: no endgame copies
    assert join(s, "a", {0}, now=0.0) == [0]
    assert join(s, "idle", {0, 1}, now=0.0) == [1]
    deliver(s, "idle", 1, now=1.0)
    assert requests(s, "idle") == [] and s.deadline("idle") is None  # nothing in the air: it may stay silent
    assert s.close("a", 100.0) == 1  # a is gone at t=100: chunk 0 goes to the idle peer
    assert requests(s, "idle") == [0]
    assert s.deadline("idle") == 100.0 + TIMEOUT  # counted from the request, not from its last frame
    assert s.tick("idle", 101.0) == []


def test_a_peer_that_never_sends_its_have_set_times_out():
    s = swarm(4)
    s.open("a", "a", False, True, 5.0)
    assert s.deadline("a") == 5.0 + TIMEOUT
    assert s.tick("a", 5.0 + TIMEOUT - 1) == []
    assert isinstance(ended(s.tick("a", 5.0 + TIMEOUT)), PeerTimeout)


# -- peers leaving, readers waiting ----------------------------------------------------------------


def test_a_closed_session_gives_its_chunks_to_another():
    s = swarm(4, depth=2)
    assert sorted(join(s, "a", {0, 1})) == [0, 1]
    assert join(s, "b", {0, 1}) == []  # both in flight elsewhere, and 2 and 3 unassigned: no copy
    assert s.close("a", 1.0) == 2
    assert sorted(requests(s, "b")) == [0, 1]
    assert s.plan.assigned("b") == {0, 1} and "a" not in s.sessions


def test_prioritized_chunks_are_the_next_requests():
    s = swarm(10, depth=1)
    [first] = join(s, "a")
    urgent = sorted(set(range(10)) - {first}, reverse=True)[:2]  # not in rank order
    s.prioritize(urgent, 1.0)
    assert requests(s, "a") == []  # the window is full: the urgent chunks come next
    deliver(s, "a", first, now=1.0)
    assert requests(s, "a") == [urgent[0]]
    deliver(s, "a", urgent[0], now=2.0)
    assert requests(s, "a") == [urgent[1]]


def test_prioritize_asks_at_once_of_an_origin_with_room():
    s = swarm(4, depth=2)
    left = {0, 1, 2} - set(join(s, "partial", {0, 1, 2}))
    assert join(s, "origin", origin=True) == [3]  # the partial holder's third chunk is left to it
    s.prioritize(left, 1.0)
    assert requests(s, "origin") == sorted(left)  # a reader waits: whoever holds it, now


def test_prioritize_asks_at_once_of_a_session_with_room_that_holds_the_chunk():
    s = swarm(10, depth=2)
    assert join(s, "partial", {6}) == [6]  # room for one more, nothing else to ask
    s.prioritize([8], 1.0)
    assert requests(s, "partial") == []  # it does not hold 8
    s.receive("partial", wire.Announce(s.raw_id, (5, 8)), 2.0)
    assert requests(s, "partial") == [8]  # the urgent one of its two new chunks
    s.prioritize([5], 3.0)
    deliver(s, "partial", 6, now=3.0)
    assert requests(s, "partial") == [5]


# -- streaming from a super-seeding origin -------------------------------------------------------------


def test_an_urgent_chunk_is_asked_of_an_origin_that_did_not_offer_it():
    s = swarm(8, depth=2)
    assert join(s, "origin", {5}, origin=True) == [5]  # what it offered
    s.prioritize([0], 0.0)
    s.receive("origin", chunk(s, 5), 0.0)  # room again: the urgent chunk goes first, offered or not
    assert requests(s, "origin") == [0]


def test_an_urgent_chunk_a_partial_holder_has_is_not_asked_of_the_origin():
    s = swarm(8, depth=2)
    join(s, "origin", {5, 6}, origin=True)
    join(s, "leecher", {0})
    s.prioritize([0], 0.0)
    assert requests(s, "origin") == []
    assert 0 not in requests(s, "leecher")  # it was asked of the leecher already, when it joined
    assert s.plan.assigned("leecher") == {0}


def test_elsewhere_puts_the_chunk_back_without_a_strike_and_the_origin_is_not_asked_again_until_it_offers_it():
    s = swarm(8, depth=2, max_bad=1)
    assert join(s, "origin", {5}, origin=True) == [5]
    s.prioritize([0], 0.0)
    assert requests(s, "origin") == [0]
    refused = s.receive("origin", wire.Error(wire.ErrorCode.ELSEWHERE, "ask the peers", s.raw_id, 0), 0.0)
    assert ended(refused) is None and refused == []  # no strike (max_bad is 1), no retry counted
    assert 0 not in s.plan.assigned("origin") and not s.plan.is_done(0)
    assert requests(s, "origin") == []  # not asked again, and nothing else is offered
    s.receive("origin", wire.Announce(s.raw_id, (0,)), 0.0)  # now it offers it
    assert requests(s, "origin") == [0]
    join(s, "leecher", {0})  # (a partial holder turning up would have been asked instead)


def test_an_origin_is_asked_for_a_waited_for_chunk_before_its_have_set_and_keeps_it_after():
    s = swarm(8, depth=2)
    s.prioritize([3], 0.0)
    s.open("origin", "origin", True, True, 0.0)
    frames = outbox(s, "origin")
    assert isinstance(frames[-1], wire.Request) and frames[-1].index == 3  # right after GET_HAVE, no round trip
    assert s.deadline("origin") == TIMEOUT  # silent until its have-set: it times out as any peer
    s.receive("origin", wire.Have.of(s.raw_id, 8, {5}), 0.0)  # it offers 5: 3 is still asked, alone
    assert requests(s, "origin") == [] and s.plan.assigned("origin") == {3}
    delivered = deliver(s, "origin", 3)
    assert [e for e in delivered if isinstance(e, Delivered)] == [Delivered(3, CHUNK, True)]
    assert requests(s, "origin") == [5]  # the first chunk is in: the rest may come


def test_the_first_chunk_a_reader_waits_for_is_asked_alone_for_half_a_second_at_most():
    without_reader = swarm(8, depth=4)
    assert len(join(without_reader, "seeder")) == 4  # nobody waits: the window fills at once
    s = swarm(8, depth=4)
    s.prioritize([6], 0.0)
    assert join(s, "seeder") == [6]  # a reader waits: its chunk goes alone
    assert s.ready_at("seeder") == 0.5
    assert s.tick("seeder", 0.4) == [] and requests(s, "seeder") == []
    assert s.tick("seeder", 0.5) == []  # no chunk came in time: the others may be asked now
    assert len(requests(s, "seeder")) == 3 and s.ready_at("seeder") is None


def test_without_a_reader_an_origin_is_asked_for_nothing_before_its_have_set():
    s = swarm(8)
    s.open("origin", "origin", True, True, 0.0)
    assert not [f for f in outbox(s, "origin") if isinstance(f, wire.Request)]
