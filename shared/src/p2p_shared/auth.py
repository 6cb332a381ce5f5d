"""Proofs without I/O: connection ids against spoofed UDP sources, and the optional swarm secret.

Connection ids (as in BitTorrent's UDP tracker protocol): the tracker answers `connect` with an
id derived from its own key, the client's address and the current time bucket. It keeps no
state, yet a request carrying a valid id proves the sender can receive at its address, so the
tracker never sends a large answer, or records a seeder, at an address that did not ask.

The swarm secret: with one set, every tracker datagram is `payload | ts | nonce | mac`, the mac
an HMAC-SHA256 of all before it; receivers refuse wrong macs, stale timestamps and repeated
nonces. Peer connections prove the secret by a challenge-response in their handshake.
"""

from __future__ import annotations

import hmac
import os
import struct

from .errors import AuthError  # noqa: F401 (raised here, imported from here)


class ConnectionIds:
    def __init__(self, key: bytes | None = None, lifetime: float = 60.0) -> None:
        self.key = key or os.urandom(32)
        self.lifetime = lifetime

    def _for(self, address: str, bucket: int) -> int:
        mac = hmac.digest(self.key, f"{address}|{bucket}".encode(), "sha256")
        return int.from_bytes(mac[:8], "big")

    def issue(self, address: str, now: float) -> int:
        return self._for(address, int(now // self.lifetime))

    def valid(self, connection_id: int | None, address: str, now: float) -> bool:
        """Ids stay valid for one to two lifetimes (the current and the previous bucket)."""
        if connection_id is None or not 0 <= connection_id < 2**64:
            return False
        given = connection_id.to_bytes(8, "big")
        bucket = int(now // self.lifetime)
        return any(
            hmac.compare_digest(self._for(address, b).to_bytes(8, "big"), given) for b in (bucket, bucket - 1)
        )


_TRAILER = struct.Struct("!qQ32s")  # timestamp (ms), nonce, mac


class Sealer:
    """Signs and checks datagrams with the swarm secret. `now` is wall-clock seconds.

    Replays: a datagram is accepted only while its timestamp is within `window` of now, so the
    nonces of every datagram accepted within that time are remembered, filed by the second of
    their timestamp and forgotten once that second is stale for good. The memory holds at most
    `max_nonces`; beyond that, datagrams are refused (never is a live nonce forgotten early,
    which would let its datagram be replayed)."""

    def __init__(self, secret: bytes, window: float = 30.0, max_nonces: int = 1 << 16) -> None:
        self.secret = secret
        self.window = window
        self.max_nonces = max_nonces
        self._seen: dict[int, set[bytes]] = {}  # second of the timestamp -> (timestamp, nonce) keys
        self.remembered = 0
        self._swept = -1

    @property
    def overhead(self) -> int:
        return _TRAILER.size

    def seal(self, payload: bytes, now: float, nonce: int | None = None) -> bytes:
        nonce = int.from_bytes(os.urandom(8), "big") if nonce is None else nonce
        head = payload + struct.pack("!qQ", int(now * 1000), nonce)
        return head + hmac.digest(self.secret, head, "sha256")

    def verify(self, datagram: bytes, now: float) -> tuple[bytes, bytes]:
        """The payload of a sealed datagram and its replay key (timestamp and nonce), or
        AuthError; the replay memory is the caller's (tracker replicas share theirs)."""
        if len(datagram) < _TRAILER.size:
            raise AuthError("no signature")
        head, mac = datagram[:-32], datagram[-32:]
        if not hmac.compare_digest(hmac.digest(self.secret, head, "sha256"), mac):
            raise AuthError("bad signature")
        stamp, _ = struct.unpack_from("!qQ", head, len(head) - 16)
        if abs(now - stamp / 1000) > self.window:
            raise AuthError("stale timestamp")
        return head[:-16], head[-16:]

    @property
    def replay_seconds(self) -> float:
        """How long a replay key must be remembered: its datagram is accepted from `window`
        before its timestamp to `window` after."""
        return 2 * self.window

    def open(self, datagram: bytes, now: float) -> bytes:
        """The payload of a sealed datagram, or AuthError."""
        payload, key = self.verify(datagram, now)
        stamp, _ = struct.unpack("!qQ", key)
        self._forget(now)
        seen = self._seen.get(stamp // 1000)
        if seen is not None and key in seen:
            raise AuthError("replayed")
        if self.remembered >= self.max_nonces:
            raise AuthError("nonce memory full")
        if seen is None:
            seen = self._seen[stamp // 1000] = set()
        seen.add(key)
        self.remembered += 1
        return payload

    def _forget(self, now: float) -> None:
        # A second whose last millisecond is older than the window cannot be accepted again.
        if int(now) == self._swept:
            return
        self._swept = int(now)
        for second in [s for s in self._seen if s + 1 < now - self.window]:
            self.remembered -= len(self._seen.pop(second))


def peer_proof(secret: bytes, role: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    """What each side of a peer connection sends to prove it holds the swarm secret."""
    return hmac.digest(secret, b"p2p-peer-auth|" + role + b"|" + client_nonce + server_nonce, "sha256")
