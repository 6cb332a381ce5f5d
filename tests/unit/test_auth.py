"""Connection ids and the swarm secret, on a fake clock."""

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


def test_replay_memory_is_bounded():
    receiver = Sealer(b"secret", max_nonces=100)
    sender = Sealer(b"secret")
    for i in range(1000):
        receiver.open(sender.seal(b"{}", now=10.0 + i * 0.001, nonce=i), now=10.0 + i * 0.001)
    assert len(receiver._seen) <= 100


def test_peer_proofs_depend_on_role_nonces_and_secret():
    a = peer_proof(b"s", b"client", b"1" * 16, b"2" * 16)
    assert a == peer_proof(b"s", b"client", b"1" * 16, b"2" * 16)
    assert a != peer_proof(b"s", b"server", b"1" * 16, b"2" * 16)
    assert a != peer_proof(b"s", b"client", b"3" * 16, b"2" * 16)
    assert a != peer_proof(b"t", b"client", b"1" * 16, b"2" * 16)
