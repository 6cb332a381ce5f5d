"""Serving peers over TCP: one coroutine per connection, requests answered in order.

A connection reads a batch of pipelined requests, then answers each: the CHUNK header with
`write`, the payload with `loop.sendfile` (os.sendfile where the transport allows, so chunk
bytes never enter Python). While it sends it does not read, so a flood of requests waits in
the kernel's socket buffer instead of in our memory.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from typing import BinaryIO

import structlog

from p2p_shared import PROTOCOL_VERSION
from p2p_shared import wire
from p2p_shared.auth import peer_proof
from p2p_shared.errors import RemoteProtocolError
from p2p_shared.ratelimit import TokenBucket

from .catalog import SeededFile
from .metrics import SeederMetrics

log = structlog.get_logger()


async def _send_payload(transport: asyncio.Transport, handle: BinaryIO, offset: int, length: int) -> int:
    """Send file bytes: os.sendfile straight away while the socket has room (most chunks fit
    the socket buffer whole), then loop.sendfile, which waits for room, for the rest."""
    sent = 0
    sock = transport.get_extra_info("socket")
    if transport.get_write_buffer_size() == 0 and sock is not None and transport.get_extra_info("sslcontext") is None:
        while sent < length:
            try:
                n = os.sendfile(sock.fileno(), handle.fileno(), offset + sent, length - sent)
            except BlockingIOError:
                break
            if n == 0:
                return sent
            sent += n
    if sent < length:
        sent += await asyncio.get_running_loop().sendfile(transport, handle, offset + sent, length - sent)
    return sent


class _Handshake:
    client_nonce = b""
    server_nonce = b""


class _Refuse(Exception):
    def __init__(self, error: wire.Error, close: bool = False) -> None:
        self.error, self.close = error, close


class PeerServer:
    def __init__(
        self,
        files: list[SeededFile],
        metrics: SeederMetrics,
        idle_timeout: float,
        max_connections: int,
        upload_limit: TokenBucket | None = None,
        max_per_address: int = 64,
        handshake_timeout: float = 10.0,
        secret: bytes | None = None,
    ) -> None:
        self.files = {f.raw_id: f for f in files}
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.upload_limit = upload_limit  # shared by every connection
        self._stale: set[str] = set()
        self.max_per_address = max_per_address
        self.handshake_timeout = handshake_timeout
        self.secret = secret
        self._active = 0
        self._by_address: dict[str, int] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        label = f"{peer[0]}:{peer[1]}" if peer else "?"
        address = peer[0] if peer else "?"
        if self._active >= self.max_connections or self._by_address.get(address, 0) >= self.max_per_address:
            self.metrics.refused.labels("too_many_connections").inc()
            log.warning("connection refused: too many connections", peer=label)
            writer.close()
            return
        self._active += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        self.metrics.connections.inc()
        self.metrics.connections_active.inc()
        opened: dict[bytes, BinaryIO] = {}
        frames = wire.FrameReader(max_payload=0)  # peers never send us chunk payloads
        handshake = _Handshake()
        greeted = False
        try:
            while True:
                # A peer that never says HELLO is dropped sooner than an idle one.
                timeout = self.idle_timeout if greeted else min(self.idle_timeout, self.handshake_timeout)
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                frames.receive_data(data)
                while (event := frames.next_event()) is not None:
                    try:
                        if not greeted:
                            greeted = self._greet(event, writer, handshake)
                        else:  # a peer that stops reading is dropped like an idle one
                            await asyncio.wait_for(self._answer(event, writer, opened), self.idle_timeout)
                    except _Refuse as refusal:
                        self.metrics.refused.labels(refusal.error.code.name.lower()).inc()
                        writer.write(wire.encode(refusal.error))
                        if refusal.close:
                            await writer.drain()
                            return
                await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except TimeoutError:
            log.debug("idle connection closed", peer=label)
        except RemoteProtocolError as exc:
            self.metrics.refused.labels("bad_request").inc()
            log.info("peer sent a bad frame", peer=label, error=str(exc))
            writer.write(wire.encode(wire.Error(wire.ErrorCode.BAD_REQUEST, str(exc))))
        except (ConnectionError, OSError) as exc:
            log.debug("connection lost", peer=label, error=str(exc))
        finally:
            for f in opened.values():
                f.close()
            self._active -= 1
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]
            self.metrics.connections_active.dec()
            writer.close()

    def _greet(self, event: wire.Event, writer: asyncio.StreamWriter, handshake: _Handshake) -> bool:
        """HELLO, and with a swarm secret a challenge-response both ways. True once done."""
        if handshake.server_nonce:  # we sent our HELLO and proof; the client's proof is due
            assert self.secret is not None
            expected = peer_proof(self.secret, b"client", handshake.client_nonce, handshake.server_nonce)
            if isinstance(event, wire.Auth) and hmac.compare_digest(event.proof, expected):
                return True
            raise _Refuse(wire.Error(wire.ErrorCode.UNAUTHORIZED, "wrong proof of the swarm secret"), close=True)
        if not isinstance(event, wire.Hello):
            raise _Refuse(wire.Error(wire.ErrorCode.BAD_REQUEST, "expected HELLO first"), close=True)
        if event.version != PROTOCOL_VERSION:
            raise _Refuse(
                wire.Error(wire.ErrorCode.UNSUPPORTED_VERSION, f"this seeder speaks version {PROTOCOL_VERSION}"),
                close=True,
            )
        if self.secret is None:
            writer.write(wire.encode(wire.Hello(PROTOCOL_VERSION)))
            return True
        if not event.flags & wire.FLAG_AUTH or len(event.nonce) != wire.NONCE_BYTES:
            raise _Refuse(wire.Error(wire.ErrorCode.UNAUTHORIZED, "this swarm needs its secret"), close=True)
        handshake.client_nonce, handshake.server_nonce = event.nonce, os.urandom(wire.NONCE_BYTES)
        proof = peer_proof(self.secret, b"server", handshake.client_nonce, handshake.server_nonce)
        writer.write(
            wire.encode(wire.Hello(PROTOCOL_VERSION, wire.FLAG_AUTH, handshake.server_nonce))
            + wire.encode(wire.Auth(proof))
        )
        return False

    def _file(self, file_id: bytes, index: int = 0) -> SeededFile:
        seeded = self.files.get(file_id)
        if seeded is None:
            raise _Refuse(wire.Error(wire.ErrorCode.UNKNOWN_FILE, "no such file here", file_id, index))
        return seeded

    async def _answer(self, event: wire.Event, writer: asyncio.StreamWriter, opened: dict[bytes, BinaryIO]) -> None:
        match event:
            case wire.Request(file_id, index):
                started = time.perf_counter()
                seeded = self._file(file_id, index)
                if not 0 <= index < seeded.manifest.num_chunks:
                    raise _Refuse(
                        wire.Error(wire.ErrorCode.BAD_INDEX, "chunk index out of range", file_id, index)
                    )
                offset, length = seeded.manifest.chunk_span(index)
                handle = opened.get(file_id)
                if handle is None:
                    try:
                        handle = opened[file_id] = open(seeded.path, "rb")
                    except OSError as exc:
                        log.error("cannot open seeded file", file=str(seeded.path), error=exc.strerror)
                        raise _Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "file unreadable", file_id, index))
                if seeded.changed(os.fstat(handle.fileno())):
                    if seeded.file_id not in self._stale:
                        self._stale.add(seeded.file_id)
                        log.warning("file changed on disk since it was hashed; not serving it", file=str(seeded.path))
                    raise _Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "file changed since hashed", file_id, index))
                if self.upload_limit is not None:
                    await asyncio.sleep(self.upload_limit.reserve(length, asyncio.get_running_loop().time()))
                writer.write(wire.chunk_header(file_id, index, length))
                if length and await _send_payload(writer.transport, handle, offset, length) < length:
                    # The file shrank under us: the frame is cut short, so the stream is unusable.
                    log.warning("file shrank while being served", file=str(seeded.path))
                    raise ConnectionAbortedError("short file")
                self.metrics.chunks_served.inc()
                self.metrics.bytes_served.inc(length)
                self.metrics.serve_seconds.observe(time.perf_counter() - started)
            case wire.GetManifest(file_id):
                writer.write(wire.encode(wire.ManifestData(file_id, self._file(file_id).manifest_bytes)))
            case wire.GetHave(file_id):
                writer.write(wire.encode(wire.Have.full(file_id, self._file(file_id).manifest.num_chunks)))
            case _:
                raise _Refuse(wire.Error(wire.ErrorCode.BAD_REQUEST, f"unexpected {type(event).__name__} frame"))
