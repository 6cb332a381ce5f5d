"""The peer handshake, both sides, without I/O.

The client speaks first: HELLO (version, flags, and with the swarm secret a nonce). The server
answers HELLO; with the secret it adds its own nonce and proves the secret over both nonces
(AUTH), and the client answers with its proof. Each side feeds the frames it receives to
`receive()` and sends what it returns; `done` turns true once the other side is trusted, and
`peer_flags` holds what the other side said it understands (FLAG_ANNOUNCE).
"""

from __future__ import annotations

import hmac
import os

from . import PEER_VERSION, wire
from .auth import peer_proof
from .errors import HandshakeRefused, PeerError, PeerRejected, RemoteProtocolError

OUR_FLAGS = wire.FLAG_ANNOUNCE


class ServerHandshake:
    def __init__(self, secret: bytes | None, nonce: bytes | None = None) -> None:
        self.secret = secret
        self._nonce = nonce
        self._client_nonce = b""
        self.done = False
        self.peer_flags = 0

    def receive(self, event: wire.Event) -> list[wire.Event]:
        if self._client_nonce:  # our proof is out; the client's is due
            assert self.secret is not None and self._nonce is not None
            expected = peer_proof(self.secret, b"client", self._client_nonce, self._nonce)
            if isinstance(event, wire.Auth) and hmac.compare_digest(event.proof, expected):
                self.done = True
                return []
            raise HandshakeRefused(wire.ErrorCode.UNAUTHORIZED, "wrong proof of the swarm secret")
        if not isinstance(event, wire.Hello):
            raise HandshakeRefused(wire.ErrorCode.BAD_REQUEST, "expected HELLO first")
        if event.version != PEER_VERSION:
            raise HandshakeRefused(wire.ErrorCode.UNSUPPORTED_VERSION, f"this peer speaks version {PEER_VERSION}")
        self.peer_flags = event.flags
        if self.secret is None:
            self.done = True
            return [wire.Hello(PEER_VERSION, OUR_FLAGS)]
        if not event.flags & wire.FLAG_AUTH or len(event.nonce) != wire.NONCE_BYTES:
            raise HandshakeRefused(wire.ErrorCode.UNAUTHORIZED, "this swarm needs its secret")
        self._client_nonce, self._nonce = event.nonce, self._nonce or os.urandom(wire.NONCE_BYTES)
        proof = peer_proof(self.secret, b"server", self._client_nonce, self._nonce)
        return [wire.Hello(PEER_VERSION, OUR_FLAGS | wire.FLAG_AUTH, self._nonce), wire.Auth(proof)]


class ClientHandshake:
    def __init__(self, secret: bytes | None, label: str, nonce: bytes | None = None, shares: bool = False) -> None:
        self.secret = secret
        self.label = label
        self.flags = OUR_FLAGS | (wire.FLAG_SHARES if shares else 0) | (wire.FLAG_AUTH if secret else 0)
        self._nonce = (nonce or os.urandom(wire.NONCE_BYTES)) if secret else b""
        self._server_nonce = b""
        self.done = False
        self.peer_flags = 0

    def hello(self) -> wire.Hello:
        return wire.Hello(PEER_VERSION, self.flags, self._nonce)

    def receive(self, event: wire.Event) -> list[wire.Event]:
        """PeerRejected if the server is not one of ours; PeerError if it speaks another version."""
        if isinstance(event, wire.Error):
            raise PeerRejected(event.code.name.lower(), event.message)
        if self._server_nonce:
            assert self.secret is not None
            expected = peer_proof(self.secret, b"server", self._nonce, self._server_nonce)
            if not isinstance(event, wire.Auth) or not hmac.compare_digest(event.proof, expected):
                raise PeerRejected("unauthorized", f"{self.label} gave a wrong proof of the swarm secret")
            self.done = True
            return [wire.Auth(peer_proof(self.secret, b"client", self._nonce, self._server_nonce))]
        if not isinstance(event, wire.Hello):
            raise RemoteProtocolError(f"{self.label} sent {type(event).__name__}, expected Hello")
        if event.version != PEER_VERSION:
            raise PeerError(f"{self.label} speaks protocol version {event.version}")
        self.peer_flags = event.flags
        if not self.secret:
            self.done = True
            return []
        if not event.flags & wire.FLAG_AUTH or len(event.nonce) != wire.NONCE_BYTES:
            raise PeerRejected("unauthorized", f"{self.label} does not hold the swarm secret")
        self._server_nonce = event.nonce
        return []
