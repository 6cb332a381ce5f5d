"""Serving peers over TCP, for seeders and sharing leechers alike: one coroutine per connection,
requests answered in order, from any ChunkSource (a complete file, or a part file).

A connection reads a batch of pipelined requests, then answers each: the CHUNK header with
`write`, the payload with `sendfile` (chunk bytes never enter Python), a manifest in blocks.
Each answer waits until the peer has taken the one before (the transport's buffer is below its
high-water mark), and while it sends it does not read: a flood of requests waits in the
kernel's socket buffer, and a peer that reads nothing holds a few hundred KiB of ours at most.
Caps on connections, in all and per address, apply as the TCP connection arrives, before any
TLS handshake; refusals are counted, and logged at most once every REFUSAL_LOG_EVERY seconds.

Peers that said they understand ANNOUNCE (a HELLO flag) hear of chunks as they become
available: a leecher's newly verified chunks, or an origin's next offers (p2p_shared.offers).
Announcements are written only between frames: one queued while a payload is in flight is
sent right after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from typing import TYPE_CHECKING, BinaryIO

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import wire
from ..errors import P2PError, RemoteProtocolError
from ..handshake import HandshakeRefused, ServerHandshake
from ..offers import OfferBook
from ..ratelimit import TokenBucket
from ..source import ChunkSource

if TYPE_CHECKING:
    from ..settings import ServingSettings

log = structlog.get_logger()

REFUSAL_CODES = (
    "unknown_file", "bad_index", "bad_request", "unsupported_version", "unavailable", "too_many_connections",
    "unauthorized",
)


class ServingMetrics:
    """`p2p_<role>_...`: what a seeder, or a leecher that shares, serves to its peers."""

    def __init__(self, registry: CollectorRegistry, role: str) -> None:
        self.chunks_served = Counter(f"p2p_{role}_chunks_served_total", "Chunks sent to peers", registry=registry)
        self.bytes_served = Counter(f"p2p_{role}_bytes_served_total", "Chunk payload bytes sent", registry=registry)
        self.serve_seconds = Histogram(
            f"p2p_{role}_chunk_serve_seconds",
            "Time from a chunk request to its last byte handed to the kernel",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.refused = Counter(
            f"p2p_{role}_requests_refused_total", "Requests answered with an error, by code", ["code"], registry=registry
        )
        self.connections = Counter(f"p2p_{role}_connections_total", "Peer connections accepted", registry=registry)
        self.connections_active = Gauge(f"p2p_{role}_connections_active", "Open peer connections", registry=registry)
        for code in REFUSAL_CODES:
            self.refused.labels(code)


COPY_BLOCK = 256 * 1024
REFUSAL_LOG_EVERY = 10.0  # seconds between log lines about refused connections


async def _send_payload(writer: asyncio.StreamWriter, handle: BinaryIO, offset: int, length: int) -> int:
    """Send file bytes: os.sendfile straight away while the socket has room (most chunks fit
    the socket buffer whole), then the loop's sendfile, which waits for room, for the rest; on
    a loop without one (uvloop), or where the kernel cannot (TLS), blocks copied through memory."""
    transport = writer.transport
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
        # Its fallback (TLS) reads from the file position and skips the seek for offset 0.
        handle.seek(offset + sent)
        try:
            return sent + await asyncio.get_running_loop().sendfile(transport, handle, offset + sent, length - sent)
        except NotImplementedError:
            pass
    while sent < length:
        block = os.pread(handle.fileno(), min(COPY_BLOCK, length - sent), offset + sent)
        if not block:
            break
        writer.write(block)
        sent += len(block)
        await writer.drain()
    return sent


def _now() -> float:
    return asyncio.get_running_loop().time()


class Listener:
    """The listening socket and its accept loop (what `PeerServer.listen` returns)."""

    def __init__(self, sock: socket.socket, task: asyncio.Task) -> None:
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        self._task.cancel()
        self.sockets[0].close()


class _Refuse(Exception):
    def __init__(self, error: wire.Error, close: bool = False) -> None:
        self.error, self.close = error, close


class _Connection:
    """One peer connection's state: what it subscribed to, and announcements waiting for a
    frame boundary."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.announces = False  # the peer understands ANNOUNCE
        self.shares = False  # the peer serves what it downloads: an origin hands it offers
        self.subscribed: set[bytes] = set()  # file ids it asked the have-set of
        self.in_payload = False
        self.queued: dict[bytes, list[int]] = {}
        self.opened: dict[bytes, BinaryIO] = {}
        self.early_holds: dict[bytes, set[int]] = {}  # a HAVE sent before its GET_HAVE

    def announce(self, file_id: bytes, indices: list[int]) -> None:
        if not indices or not self.announces or file_id not in self.subscribed or self.writer.is_closing():
            return
        self.queued.setdefault(file_id, []).extend(indices)
        if not self.in_payload:
            self.flush()

    def flush(self) -> None:
        for file_id, indices in self.queued.items():
            for start in range(0, len(indices), wire.MAX_ANNOUNCED):
                self.writer.write(wire.encode(wire.Announce(file_id, tuple(indices[start : start + wire.MAX_ANNOUNCED]))))
        self.queued.clear()


class PeerServer:
    """`super_seed`: offer each announce-capable downloader only a few chunks at a time
    (p2p_shared.offers), for an origin whose upload must not be spent twice on one chunk."""

    def __init__(
        self,
        sources: list[ChunkSource],
        metrics: ServingMetrics,
        idle_timeout: float,
        max_connections: int,
        upload_limit: TokenBucket | None = None,
        max_per_address: int = 64,
        handshake_timeout: float = 10.0,
        secret: bytes | None = None,
        super_seed: bool = False,
    ) -> None:
        self.sources = {s.raw_id: s for s in sources}
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.upload_limit = upload_limit  # shared by every connection
        self.max_per_address = max_per_address
        self.handshake_timeout = handshake_timeout
        self.secret = secret
        self._refusals = 0  # connections refused since the last log line about them
        self._refusal_logged = -REFUSAL_LOG_EVERY
        self._offers = {s.raw_id: OfferBook(s.manifest.num_chunks, order_key=s.raw_id) for s in sources} if super_seed else {}
        self._stale: set[bytes] = set()
        self._active = 0
        self._by_address: dict[str, int] = {}
        self._connections: set[_Connection] = set()

    @classmethod
    def configured(
        cls, sources: list[ChunkSource], metrics: ServingMetrics, settings: ServingSettings, super_seed: bool = False
    ) -> PeerServer:
        """A server with a seeder's or a sharing leecher's limits, from its settings."""
        limit = TokenBucket(settings.max_upload_rate, _now()) if settings.max_upload_rate else None
        return cls(
            sources, metrics, settings.connection_timeout, settings.max_connections, limit,
            max_per_address=settings.max_connections_per_address, handshake_timeout=settings.handshake_timeout,
            secret=settings.secret_bytes(), super_seed=super_seed,
        )

    async def listen(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> Listener:
        """Accept peers on `host:port` (port 0: any free one), within TLS when given. The caps
        apply to the TCP connection as it arrives; only then does the TLS handshake start, under
        the handshake timeout. (Our own accept loop: asyncio's servers do TLS before any code of
        ours runs, and upgrading an accepted stream with start_tls hangs on Python 3.11.2.)"""
        try:
            sock = socket.create_server((host, port), backlog=128)
        except OSError as exc:
            raise P2PError(f"cannot listen on tcp {host}:{port}: {exc.strerror}") from None
        sock.setblocking(False)
        return Listener(sock, asyncio.create_task(self._accept(sock, tls)))

    async def _accept(self, sock: socket.socket, tls: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, say: the next accept may work
                log.warning("cannot accept a connection", error=exc.strerror)
                await asyncio.sleep(0.1)
                continue
            label, address = f"{peer[0]}:{peer[1]}", peer[0]
            if self._active >= self.max_connections or self._by_address.get(address, 0) >= self.max_per_address:
                self._refuse_connection(label)
                conn.close()
                continue
            self._active += 1
            self._by_address[address] = self._by_address.get(address, 0) + 1
            self.metrics.connections.inc()
            self.metrics.connections_active.inc()
            asyncio.create_task(self._admit(conn, label, address, tls))

    async def _admit(self, conn: socket.socket, label: str, address: str, tls: ssl.SSLContext | None) -> None:
        """TLS first if asked, then the peer protocol; the connection's place is freed at the end."""
        loop = asyncio.get_running_loop()
        served = loop.create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self.handle(reader, writer, label)
            finally:
                served.set_result(None)

        try:
            await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), serve), conn,
                ssl=tls, ssl_handshake_timeout=self.handshake_timeout if tls else None,
            )
            await served
        except (OSError, ssl.SSLError, TimeoutError) as exc:  # a TLS handshake that failed or never came
            log.debug("connection not set up", peer=label, tls=tls is not None, error=str(exc) or type(exc).__name__)
            conn.close()
        finally:
            self._active -= 1
            self._by_address[address] -= 1
            if not self._by_address[address]:
                del self._by_address[address]
            self.metrics.connections_active.dec()

    def announce(self, file_id: bytes, index: int) -> None:
        """A chunk of `file_id` became available here: tell the peers that follow it."""
        for conn in self._connections:
            conn.announce(file_id, [index])

    async def keep_offering(self, stop: asyncio.Event, every: float = 2.0) -> None:
        """An origin's offers held by downloaders that stopped taking chunks go stale with time,
        not with traffic: look for room every few seconds."""
        while self._offers and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            for file_id, book in self._offers.items():
                for conn, new in book.top_up_all(_now()).items():
                    conn.announce(file_id, new)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str) -> None:
        """One admitted connection (within the caps, past TLS), until it ends."""
        conn = _Connection(writer)
        frames = wire.FrameReader(max_payload=0, accept=wire.SERVER_HANDSHAKE)
        handshake = ServerHandshake(self.secret)
        try:
            while True:
                # A peer that never completes its HELLO is dropped sooner than an idle one.
                timeout = self.idle_timeout if handshake.done else min(self.idle_timeout, self.handshake_timeout)
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    break
                pending = memoryview(data)
                while pending:  # frame by frame: the handshake widens what the next may be
                    pending = pending[frames.receive_frame(pending) :]
                    if (event := frames.next_event()) is None:
                        break
                    try:
                        if not handshake.done:
                            for frame in handshake.receive(event):
                                writer.write(wire.encode(frame))
                            if handshake.done:
                                frames.accept = wire.SERVER_RECEIVES
                                conn.announces = bool(handshake.peer_flags & wire.FLAG_ANNOUNCE)
                                conn.shares = conn.announces and bool(handshake.peer_flags & wire.FLAG_SHARES)
                                self._connections.add(conn)
                        else:  # a peer that stops reading is dropped like an idle one
                            await asyncio.wait_for(self._answer(event, conn), self.idle_timeout)
                    except (_Refuse, HandshakeRefused) as refusal:
                        self.metrics.refused.labels(refusal.error.code.name.lower()).inc()
                        writer.write(wire.encode(refusal.error))
                        if isinstance(refusal, HandshakeRefused) or refusal.close:
                            await writer.drain()
                            return
                await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except TimeoutError:  # idle, or not reading what we send: what is queued is dropped with it
            log.debug("idle connection closed", peer=label)
            writer.transport.abort()
        except RemoteProtocolError as exc:
            self.metrics.refused.labels("bad_request").inc()
            log.info("peer sent a bad frame", peer=label, error=str(exc))
            writer.write(wire.encode(wire.Error(wire.ErrorCode.BAD_REQUEST, str(exc))))
        except (ConnectionError, OSError) as exc:
            log.debug("connection lost", peer=label, error=str(exc))
        finally:
            self._connections.discard(conn)
            for book in self._offers.values():
                book.leave(conn)
            for f in conn.opened.values():
                f.close()
            writer.close()

    def _refuse_connection(self, label: str) -> None:
        self.metrics.refused.labels("too_many_connections").inc()
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_EVERY:
            log.warning("connections refused: too many connections", last_peer=label, refused=self._refusals)
            self._refusals, self._refusal_logged = 0, now

    def _source(self, file_id: bytes, index: int = 0) -> ChunkSource:
        source = self.sources.get(file_id)
        if source is None:
            raise _Refuse(wire.Error(wire.ErrorCode.UNKNOWN_FILE, "no such file here", file_id, index))
        return source

    def _downloader_holds(self, conn: _Connection, file_id: bytes, indices) -> None:
        """What a downloader holds (its HAVE, then ANNOUNCEs): an origin offers it other chunks."""
        book = self._offers.get(file_id)
        if book is None or not conn.shares:
            return
        if book.joined(conn):
            conn.announce(file_id, book.holds(conn, indices, _now()))
        else:
            conn.early_holds.setdefault(file_id, set()).update(indices)

    def _check_indices(self, source: ChunkSource, indices) -> None:
        if any(not 0 <= i < source.manifest.num_chunks for i in indices):
            raise _Refuse(wire.Error(wire.ErrorCode.BAD_REQUEST, "chunk index out of range", source.raw_id), close=True)

    async def _answer(self, event: wire.Event, conn: _Connection) -> None:
        writer = conn.writer
        match event:
            case wire.Request(file_id, index):
                await self._serve_chunk(conn, file_id, index)
            case wire.GetManifest(file_id):
                body = memoryview(self._source(file_id).manifest_bytes)  # written from the one copy we keep
                writer.write(wire.manifest_header(file_id, len(body)))
                for start in range(0, len(body), COPY_BLOCK):
                    writer.write(body[start : start + COPY_BLOCK])
                    await writer.drain()
            case wire.GetHave(file_id):
                source = self._source(file_id)
                conn.subscribed.add(file_id)
                book = self._offers.get(file_id)
                num = source.manifest.num_chunks
                if book is not None and conn.shares:
                    have = wire.Have.of(file_id, num, book.join(conn, _now(), conn.early_holds.pop(file_id, ())))
                elif (held := source.held()) is None:
                    have = wire.Have.full(file_id, num)
                else:
                    have = wire.Have.of(file_id, num, held)
                writer.write(wire.encode(have))
            case wire.Have(file_id, num_chunks):
                source = self._source(file_id)
                if num_chunks != source.manifest.num_chunks:
                    raise _Refuse(wire.Error(wire.ErrorCode.BAD_REQUEST, "HAVE of the wrong length", file_id), close=True)
                self._downloader_holds(conn, file_id, event.indices())
            case wire.Announce(file_id, indices):
                self._check_indices(self._source(file_id), indices)
                self._downloader_holds(conn, file_id, indices)
            case wire.Decline(file_id, indices):
                self._check_indices(self._source(file_id), indices)
                book = self._offers.get(file_id)
                if book is not None and conn.shares:
                    conn.announce(file_id, book.decline(conn, indices, _now()))
            case _:
                raise _Refuse(wire.Error(wire.ErrorCode.BAD_REQUEST, f"unexpected {type(event).__name__} frame"))
        await writer.drain()  # one answer at a time in our memory: the peer must take it first

    async def _serve_chunk(self, conn: _Connection, file_id: bytes, index: int) -> None:
        started = time.perf_counter()
        source = self._source(file_id, index)
        if not 0 <= index < source.manifest.num_chunks:
            raise _Refuse(wire.Error(wire.ErrorCode.BAD_INDEX, "chunk index out of range", file_id, index))
        if not source.has(index):
            raise _Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "chunk not held here", file_id, index))
        offset, length = source.manifest.chunk_span(index)
        handle = conn.opened.get(file_id)
        if handle is None:
            try:
                handle = conn.opened[file_id] = source.open()
            except OSError as exc:
                log.error("cannot open a served file", file=source.manifest.name, error=exc.strerror)
                raise _Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "file unreadable", file_id, index)) from None
        if not source.servable(handle):
            if file_id not in self._stale:
                self._stale.add(file_id)
                log.warning("file changed on disk since it was hashed; not serving it", file=source.manifest.name)
            raise _Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "file changed since hashed", file_id, index))
        if self.upload_limit is not None:
            await asyncio.sleep(self.upload_limit.reserve(length, asyncio.get_running_loop().time()))
        conn.writer.write(wire.chunk_header(file_id, index, length))
        conn.in_payload = True
        try:
            if length and await _send_payload(conn.writer, handle, offset, length) < length:
                # The file shrank under us: the frame is cut short, so the stream is unusable.
                log.warning("file shrank while being served", file=source.manifest.name)
                raise ConnectionAbortedError("short file")
        finally:
            conn.in_payload = False
        conn.flush()
        book = self._offers.get(file_id)
        if book is not None and conn.shares:
            conn.announce(file_id, book.sent(conn, index, _now()))
        self.metrics.chunks_served.inc()
        self.metrics.bytes_served.inc(length)
        self.metrics.serve_seconds.observe(time.perf_counter() - started)
