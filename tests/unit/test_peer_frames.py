"""What a connection to a peer writes: announcements merged per file, nothing else changed."""

from p2p_shared import wire
from p2p_shared.net.peer_client import _announcing_once

A, B = bytes(32), bytes(range(32))


def test_every_announce_of_a_file_goes_in_its_first_announce_and_the_rest_keeps_its_order():
    frames = [wire.Announce(A, (1,)), wire.Request(A, 7), wire.Announce(B, (4,)), wire.Announce(A, (2, 3)),
              wire.Decline(A, (9,)), wire.Request(B, 8), wire.Announce(B, (5,))]
    assert _announcing_once(frames) == [
        wire.Announce(A, (1, 2, 3)), wire.Request(A, 7), wire.Announce(B, (4, 5)), wire.Decline(A, (9,)), wire.Request(B, 8),
    ]


def test_an_announce_frame_never_carries_more_than_its_limit():
    frames = [wire.Announce(A, (i,)) for i in range(wire.MAX_ANNOUNCED + 3)]
    merged = _announcing_once(frames)
    assert [len(f.indices) for f in merged] == [wire.MAX_ANNOUNCED, 3]
    assert [i for f in merged for i in f.indices] == list(range(wire.MAX_ANNOUNCED + 3))
    for frame in merged:
        wire.encode(frame)  # each one encodable


def test_frames_without_announcements_are_untouched():
    frames = [wire.Request(A, i) for i in range(5)]
    assert _announcing_once(frames) == frames
