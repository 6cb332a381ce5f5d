"""Connection ids and the swarm secret, on a fake clock."""

import hashlib
import hmac
import struct

import pytest

from p2p_shared.auth import AuthError, ConnectionIds, Sealer, peer_proof


def test_connection_ids_prove_an_address_for_a_while():
    ids = ConnectionIds(key=b"k" * 32, lifetime=60)
    cid = ids.issue("10.0.0.1", now=100)
    assert ids.valid(cid, "10.0.0.1", now=100)
    assert ids.valid(cid, "10.0.0.1", now=179)  # the next bucket still accepts it
    assert not ids.valid(cid, "10.0.0.1", now=181)  # two buckets later: expired
    assert not ids.valid(cid, "10.0.0.2", now=100)  # another address
    assert not ids.valid(None, "10.0.0.1", now=100)
    assert not ids.valid(cid ^ 1, "10.0.0.1", now=100)
    assert not ConnectionIds(key=b"x" * 32).valid(cid, "10.0.0.1", now=100)  # another tracker


def test_sealed_datagrams_round_trip():
    sealer = Sealer(b"secret")
    datagram = sealer.seal(b'{"type":"ack"}', now=1000.0)
    assert len(datagram) == len(b'{"type":"ack"}') + sealer.overhead
    assert Sealer(b"secret").open(datagram, now=1000.5) == b'{"type":"ack"}'


@pytest.mark.parametrize(
    ("secret", "now", "reason"),
    [(b"other", 1000.0, "bad signature"), (b"secret", 1031.0, "stale timestamp"), (b"secret", 969.0, "stale timestamp")],
)
def test_wrong_secret_or_stale_messages_are_refused(secret, now, reason):
    datagram = Sealer(b"secret").seal(b"{}", now=1000.0)
    with pytest.raises(AuthError, match=reason):
        Sealer(secret).open(datagram, now=now)


def test_replays_and_tampering_are_refused():
    sender, receiver = Sealer(b"secret"), Sealer(b"secret")
    datagram = sender.seal(b'{"a":1}', now=10.0)
    receiver.open(datagram, now=10.0)
    with pytest.raises(AuthError, match="replayed"):
        receiver.open(datagram, now=11.0)
    tampered = bytearray(sender.seal(b'{"a":1}', now=10.0))
    tampered[3] ^= 1
    with pytest.raises(AuthError, match="bad signature"):
        receiver.open(bytes(tampered), now=10.0)
    with pytest.raises(AuthError, match="no signature"):
        receiver.open(b"short", now=10.0)


def test_replay_memory_is_bounded_and_refuses_beyond_it():
    receiver = Sealer(b"secret", max_nonces=100)
    sender = Sealer(b"secret")
    refused = 0
    for i in range(1000):
        try:
            receiver.open(sender.seal(b"{}", now=10.0 + i * 0.001, nonce=i), now=10.0 + i * 0.001)
        except AuthError as exc:
            assert exc.reason == "nonce memory full"
            refused += 1
    assert receiver.remembered == 100 and refused == 900


def test_a_replay_after_more_datagrams_than_the_memory_holds_is_still_refused():
    # Issue 12, item 19: a sealed register replayed after 70,000 other sealed datagrams.
    receiver, sender = Sealer(b"secret"), Sealer(b"secret")
    register = sender.seal(b'{"type":"register"}', now=1000.0)
    receiver.open(register, now=1000.0)
    for i in range(70_000):
        try:
            receiver.open(sender.seal(b"{}", now=1000.0 + i / 10_000, nonce=i), now=1000.0 + i / 10_000)
        except AuthError as exc:  # beyond what the memory holds: refused, never forgotten early
            assert exc.reason == "nonce memory full"
    with pytest.raises(AuthError):
        receiver.open(register, now=1008.0)
    assert receiver.remembered == receiver.max_nonces


def test_peer_proofs_depend_on_role_nonces_and_secret():
    a = peer_proof(b"s", b"client", b"1" * 16, b"2" * 16)
    assert a == peer_proof(b"s", b"client", b"1" * 16, b"2" * 16)
    assert a != peer_proof(b"s", b"server", b"1" * 16, b"2" * 16)
    assert a != peer_proof(b"s", b"client", b"3" * 16, b"2" * 16)
    assert a != peer_proof(b"t", b"client", b"1" * 16, b"2" * 16)


def test_peer_proof_is_hmac_sha256_over_a_fixed_label_role_and_both_nonces():
    # The bytes both sides must agree on, spelled out: a change here breaks every older peer.
    expected = hmac.new(b"s", b"p2p-peer-auth|client|" + b"1" * 16 + b"2" * 16, hashlib.sha256).digest()
    assert peer_proof(b"s", b"client", b"1" * 16, b"2" * 16) == expected


def test_sealed_datagram_layout_is_payload_timestamp_nonce_mac():
    datagram = Sealer(b"secret").seal(b"{}", now=1_700_000_000.25, nonce=7)
    head = b"{}" + struct.pack("!qQ", 1_700_000_000_250, 7)
    assert datagram == head + hmac.new(b"secret", head, hashlib.sha256).digest()


def test_timestamps_up_to_the_window_away_are_accepted_at_real_clock_values():
    now = 1_700_000_000.0
    sender, receiver = Sealer(b"secret"), Sealer(b"secret", window=30.0)
    assert receiver.open(sender.seal(b"{}", now=now - 30.0), now=now) == b"{}"
    assert receiver.open(sender.seal(b"{}", now=now + 30.0), now=now) == b"{}"
    with pytest.raises(AuthError) as refused:
        receiver.open(sender.seal(b"{}", now=now - 30.001), now=now)
    assert refused.value.reason == "stale timestamp"


def test_an_empty_payload_is_still_a_signed_datagram():
    sealer = Sealer(b"secret")
    datagram = sealer.seal(b"", now=10.0)
    assert len(datagram) == sealer.overhead
    assert Sealer(b"secret").open(datagram, now=10.0) == b""


def test_a_full_replay_memory_refuses_new_nonces_rather_than_forget_live_ones():
    receiver, sender = Sealer(b"secret", max_nonces=3), Sealer(b"secret")
    sealed = [sender.seal(b"{}", now=10.0, nonce=i) for i in range(4)]
    for datagram in sealed[:3]:
        receiver.open(datagram, now=10.0)
    with pytest.raises(AuthError, match="nonce memory full"):
        receiver.open(sealed[3], now=10.0)
    with pytest.raises(AuthError, match="replayed"):  # the oldest is still remembered
        receiver.open(sealed[0], now=10.0)


def test_replay_memory_is_emptied_once_its_timestamps_are_stale():
    receiver, sender = Sealer(b"secret", window=30.0), Sealer(b"secret")
    first = sender.seal(b"{}", now=10.0)
    receiver.open(first, now=10.0)
    receiver.open(sender.seal(b"{}", now=40.0), now=40.0)  # the first could still come back at 40
    assert receiver.remembered == 2
    receiver.open(sender.seal(b"{}", now=41.5), now=41.5)  # now its timestamp is stale for good
    assert receiver.remembered == 2
    with pytest.raises(AuthError, match="stale timestamp"):
        receiver.open(first, now=41.5)


def test_connection_ids_out_of_range_are_invalid_not_errors():
    ids = ConnectionIds(key=b"k" * 32)
    for wrong in (-1, 2**64, 3**64):
        assert not ids.valid(wrong, "10.0.0.1", now=100)


def test_connection_ids_last_one_to_two_minutes_by_default():
    ids = ConnectionIds(key=b"k" * 32)
    cid = ids.issue("10.0.0.1", now=0)
    assert ids.valid(cid, "10.0.0.1", now=119.9) and not ids.valid(cid, "10.0.0.1", now=120.0)
