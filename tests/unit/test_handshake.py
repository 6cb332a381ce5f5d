"""The peer handshake, both sides fed to each other without sockets."""

import pytest

from p2p_shared import PEER_VERSION, wire
from p2p_shared.errors import PeerError, PeerRejected
from p2p_shared.handshake import ClientHandshake, HandshakeRefused, ServerHandshake

SECRET = b"s" * 16


def through_bytes(event: wire.Event) -> wire.Event:
    """Every frame goes through its exact bytes, as on a socket."""
    reader = wire.FrameReader()
    reader.receive_data(wire.encode(event))
    return reader.next_event()


def run(client: ClientHandshake, server: ServerHandshake) -> None:
    to_server = [client.hello()]
    while to_server:
        to_client = [frame for event in to_server for frame in server.receive(through_bytes(event))]
        to_server = [frame for event in to_client for frame in client.receive(through_bytes(event))]


@pytest.mark.parametrize("secret", [None, SECRET])
def test_both_sides_finish_and_learn_that_the_other_announces(secret):
    client, server = ClientHandshake(secret, "peer"), ServerHandshake(secret)
    run(client, server)
    assert client.done and server.done
    assert client.peer_flags & wire.FLAG_ANNOUNCE and server.peer_flags & wire.FLAG_ANNOUNCE


def test_a_client_with_a_wrong_secret_is_refused_by_the_server():
    client, server = ClientHandshake(b"x" * 16, "peer"), ServerHandshake(SECRET)
    hello, auth = server.receive(client.hello())
    assert client.receive(hello) == []
    with pytest.raises(PeerRejected, match="wrong proof"):
        client.receive(auth)  # the client sees the server's proof does not match its secret


def test_a_client_that_sends_a_wrong_proof_is_refused():
    server = ServerHandshake(SECRET)
    server.receive(wire.Hello(PEER_VERSION, wire.FLAG_AUTH, b"n" * 16))
    with pytest.raises(HandshakeRefused) as refused:
        server.receive(wire.Auth(b"\0" * 32))
    assert refused.value.error.code == wire.ErrorCode.UNAUTHORIZED and not server.done


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (wire.GetHave(bytes(32)), wire.ErrorCode.BAD_REQUEST),
        (wire.Hello(PEER_VERSION + 1), wire.ErrorCode.UNSUPPORTED_VERSION),
        (wire.Hello(PEER_VERSION), wire.ErrorCode.UNAUTHORIZED),  # no secret shown
    ],
)
def test_server_refuses_anything_but_a_proper_hello(first, code):
    with pytest.raises(HandshakeRefused) as refused:
        ServerHandshake(SECRET).receive(first)
    assert refused.value.error.code == code


def test_client_refuses_a_server_without_the_secret_or_of_another_version():
    with pytest.raises(PeerRejected, match="does not hold the swarm secret"):
        ClientHandshake(SECRET, "peer").receive(wire.Hello(PEER_VERSION))
    with pytest.raises(PeerError, match="version"):
        ClientHandshake(None, "peer").receive(wire.Hello(PEER_VERSION + 1))
    with pytest.raises(PeerRejected):
        ClientHandshake(None, "peer").receive(wire.Error(wire.ErrorCode.UNAUTHORIZED, "no"))
