"""One connection to a peer: a buffered protocol that receives chunk payloads in place.

The kernel copies each payload straight into a buffer from this connection's small pool
(`recv_into` through `get_buffer`), and the pool refuses any payload beyond the requests in
flight, so a peer cannot make us allocate more than `depth` chunk buffers. Frames become
events on a queue that the download's worker for this peer consumes (net/worker.py).
"""

from __future__ import annotations

import asyncio
import ssl

from .. import wire
from ..errors import PeerClosed, PeerConnectError, PeerRejected, PeerTimeout, RemoteProtocolError
from ..handshake import ClientHandshake

MAX_QUEUED_EVENTS = 1024


class _PeerProtocol(asyncio.BufferedProtocol):
    def __init__(self, conn: PeerConnection) -> None:
        self.conn = conn

    def connection_made(self, transport) -> None:
        self.conn._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn._frames.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        try:
            conn._frames.buffer_updated(nbytes)
        except RemoteProtocolError as exc:
            conn._fail(exc)
            return
        while (event := conn._frames.next_event()) is not None:
            conn.events.put_nowait(event)
        if conn.events.qsize() > MAX_QUEUED_EVENTS:
            conn._fail(RemoteProtocolError("peer sent more frames than we asked for"))

    def eof_received(self) -> bool:
        self.conn._fail(PeerClosed(f"{self.conn.label} closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._fail(PeerClosed(f"{self.conn.label} connection lost" + (f": {exc}" if exc else "")))


class PeerConnection:
    def __init__(self, label: str, chunk_size: int, depth: int) -> None:
        self.label = label
        self.chunk_size = chunk_size
        self.depth = depth
        self.events: asyncio.Queue = asyncio.Queue()
        self._frames = wire.FrameReader(self._allocate, max_payload=chunk_size, accept=wire.CLIENT_HANDSHAKE)
        self._transport: asyncio.Transport | None = None
        self._free: list[bytearray] = []
        self._lent = 0
        self.error: Exception | None = None
        self.announces = False  # the peer sends and understands ANNOUNCE frames

    def _allocate(self, size: int) -> bytearray:
        if size > self.chunk_size:
            raise RemoteProtocolError(f"chunk of {size} bytes, larger than the manifest's chunk size")
        if self._lent >= self.depth:
            raise RemoteProtocolError("peer sent a chunk we did not ask for")
        self._lent += 1
        return self._free.pop() if self._free else bytearray(self.chunk_size)

    def take_chunks(self, chunk_size: int, depth: int) -> None:
        """From now on, take chunk payloads of up to `chunk_size` bytes, `depth` at a time (a
        connection opened for a manifest goes on to serve the download)."""
        self.chunk_size, self.depth = chunk_size, depth
        self._frames.max_payload = chunk_size

    def release(self, buffer: bytearray) -> None:
        """Give a chunk buffer back once its bytes are verified and written."""
        self._lent -= 1
        self._free.append(buffer)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
            self.events.put_nowait(exc)
        if self._transport is not None:
            self._transport.abort()

    def send(self, event: wire.Event) -> None:
        if self.error is not None:
            raise self.error
        assert self._transport is not None
        self._transport.write(wire.encode(event))

    async def next_event(self, timeout: float) -> wire.Event:
        """The next frame; a PeerError (or RemoteProtocolError) if the connection failed."""
        try:
            item = await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            self._fail(PeerTimeout(f"{self.label} sent nothing for {timeout:g}s"))
            raise self.error from None  # type: ignore[misc]
        if isinstance(item, Exception):
            raise item
        return item

    async def expect(self, kind: type, timeout: float):
        event = await self.next_event(timeout)
        if isinstance(event, wire.Error):
            raise PeerRejected(event.code.name.lower(), event.message)
        if not isinstance(event, kind):
            raise RemoteProtocolError(f"{self.label} sent {type(event).__name__}, expected {kind.__name__}")
        return event

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def open_peer(
    host: str,
    port: int,
    *,
    chunk_size: int,
    depth: int,
    timeout: float,
    secret: bytes | None = None,
    tls: ssl.SSLContext | None = None,
    shares: bool = False,
    first: tuple[wire.Event, ...] = (),
) -> PeerConnection:
    """Connect and exchange HELLO (and with a swarm secret, proofs both ways); OS errors become
    PeerConnectError. `first`: requests to send as soon as the peer may take them: right after
    our HELLO without a secret (the holder answers them once it has read it: one round trip
    less), after the proofs with one; their answers wait in `events`."""
    conn = PeerConnection(f"{host}:{port}", chunk_size, depth)
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: _PeerProtocol(conn), host, port, ssl=tls, server_hostname="" if tls else None),
            timeout,
        )
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise PeerConnectError(f"cannot connect to {host}:{port}: {reason}") from None
    try:
        handshake = ClientHandshake(secret, conn.label, shares=shares)
        conn.send(handshake.hello())
        if first and secret is None:
            conn._frames.accept = wire.CLIENT_RECEIVES  # their answers may follow the HELLO at once
            for frame in first:
                conn.send(frame)
        while not handshake.done:
            for frame in handshake.receive(await conn.next_event(timeout)):
                conn.send(frame)
        conn.announces = bool(handshake.peer_flags & wire.FLAG_ANNOUNCE)
        conn._frames.accept = wire.CLIENT_RECEIVES
        if first and secret is not None:
            for frame in first:
                conn.send(frame)
    except BaseException:
        conn.close()
        raise
    return conn
