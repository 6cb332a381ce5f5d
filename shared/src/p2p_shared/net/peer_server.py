"""Serving peers over TCP, for every holder alike: one coroutine per connection, requests
answered in order, from the ChunkSources of the moment (complete files, part files), which come
and go while the server runs. What to answer is decided in p2p_shared.serving; this is its I/O.

A connection reads a batch of pipelined requests, then answers each: the CHUNK header with
`write`, the payload with one `sendfile` (chunk bytes never enter Python), a manifest in
blocks. Over TLS the kernel cannot encrypt (no kernel TLS here): the connection's TLS runs in a
thread of its own (net/tls.py, `TlsStream`), which gets each chunk read with one preadv and
encrypts it in one call. Each answer waits until the peer has taken the one before (the
transport's buffer is below its high-water mark; over TLS, empty), and while it sends it does
not read: a flood of requests waits in the kernel's socket buffer, and a peer that reads
nothing holds a chunk of ours at most, besides the kernel's send buffer (SEND_BUFFER).
Frames that need no answer (what a downloader holds) cost no timer and no drain. Caps on
connections, in all and per address, apply as the TCP connection arrives, before any TLS
handshake; refusals are counted, and logged at most once every REFUSAL_LOG_EVERY seconds.

Announcements (a download's newly verified chunks, an origin's next offers) are written only
between frames: one queued while a payload is in flight is sent right after it.
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
from ..ratelimit import TokenBucket
from ..serving import Action, PeerState, Refuse, Send, SendChunk, SendManifest, ServingCore
from ..source import ChunkSource
from .tls import TlsStream

if TYPE_CHECKING:
    from ..settings import ServingSettings

log = structlog.get_logger()

REFUSAL_CODES = (
    "unknown_file", "bad_index", "bad_request", "unsupported_version", "unavailable", "too_many_connections",
    "unauthorized", "elsewhere",
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
SEND_BUFFER = 2 << 20  # bytes; the kernel doubles it
READ_SIZE = 65536  # bytes of requests read at once
REFUSAL_LOG_EVERY = 10.0  # seconds between log lines about refused connections


async def _send_payload(conn: _Connection, handle: BinaryIO, offset: int, length: int, head: bytes) -> int:
    """Send `head` (the CHUNK frame's header, after the announcements due), then file bytes.
    Plain TCP: the head with MSG_MORE, so that it leaves in the payload's first segment, not in
    a packet of its own, then os.sendfile straight away, the whole chunk in one call when the
    socket buffer has room (SEND_BUFFER makes it so unless the peer is behind), then the loop's
    sendfile, which waits for room, for the rest. TLS: the head and the chunk, read with one
    preadv behind it, handed whole to the connection's TLS thread, which encrypts and sends them
    in one go. What a loop without a sendfile of its own (uvloop) cannot send that way goes
    through memory."""
    writer = conn.writer
    if isinstance(writer, TlsStream):
        block = conn.block(len(head) + length)
        block[: len(head)] = head
        got = os.preadv(handle.fileno(), [block[len(head) :]], offset)
        writer.write(block[: len(head) + got])
        await writer.drain()  # all of it with the kernel: the buffer is free again
        return got
    transport = writer.transport
    sent = 0
    sock = conn.sock
    if sock is not None:
        if transport.get_write_buffer_size() == 0:
            try:
                taken = sock.send(head, (socket.MSG_MORE if length else 0) | socket.MSG_DONTWAIT)
            except BlockingIOError:
                taken = 0
            head = head[taken:]
        if head:
            writer.write(head)
        else:
            while sent < length:
                try:
                    n = os.sendfile(sock.fileno(), handle.fileno(), offset + sent, length - sent)
                except BlockingIOError:
                    break
                if n == 0:
                    return sent
                sent += n
        if sent < length:
            # Its fallback reads from the file position and skips the seek for offset 0.
            handle.seek(offset + sent)
            try:
                return sent + await asyncio.get_running_loop().sendfile(transport, handle, offset + sent, length - sent)
            except NotImplementedError:
                pass
    else:
        writer.write(head)
    while sent < length:  # (a transport may keep what it is given: fresh bytes each time)
        data = os.pread(handle.fileno(), min(COPY_BLOCK, length - sent), offset + sent)
        if not data:
            break
        writer.write(data)
        sent += len(data)
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


class _Connection:
    """The shell's side of one connection: its writer, and the files it opened to send from."""

    __slots__ = ("writer", "state", "sock", "opened", "sending", "_block")

    def __init__(self, writer: asyncio.StreamWriter | TlsStream, state: PeerState, sock: socket.socket | None) -> None:
        self.writer = writer
        self.state = state
        self.sock = sock  # plain TCP: the socket under the transport, for sendfile
        self.opened: dict[bytes, BinaryIO] = {}
        self.sending: bytes | None = None  # the file whose payload is in flight
        self._block: memoryview | None = None  # TLS: where a chunk is read to, one at a time
        state.shell = self

    def block(self, length: int) -> memoryview:
        if self._block is None or len(self._block) < length:
            self._block = memoryview(bytearray(length))
        return self._block[:length]

    def flush(self) -> None:
        """Announcements queued while a payload was in flight, or since the last frame."""
        if self.state.in_payload or self.writer.is_closing():
            return
        for frame in self.state.take_queued():
            self.writer.write(wire.encode(frame))

    def forget(self, file_id: bytes) -> None:
        """The file is served no more: close our handle now, or after the payload in flight."""
        if self.sending != file_id and (handle := self.opened.pop(file_id, None)) is not None:
            handle.close()


class PeerServer:
    """The I/O of a peer server: accept within the caps, then read frames and carry out what
    the serving core answers (p2p_shared.serving). Sources come and go while it runs."""

    def __init__(
        self,
        metrics: ServingMetrics,
        idle_timeout: float,
        max_connections: int,
        upload_limit: TokenBucket | None = None,
        max_per_address: int = 64,
        handshake_timeout: float = 10.0,
        secret: bytes | None = None,
    ) -> None:
        self.core = ServingCore(secret)
        self.metrics = metrics
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.upload_limit = upload_limit  # shared by every connection
        self.max_per_address = max_per_address
        self.handshake_timeout = handshake_timeout
        self._refusals = 0  # connections refused since the last log line about them
        self._refusal_logged = -REFUSAL_LOG_EVERY
        self._stale: set[bytes] = set()
        self._active = 0
        self._by_address: dict[str, int] = {}

    @classmethod
    def configured(cls, metrics: ServingMetrics, settings: ServingSettings) -> PeerServer:
        """A server with a seeder's or a sharing leecher's limits, from its settings."""
        limit = TokenBucket(settings.max_upload_rate, _now()) if settings.max_upload_rate else None
        return cls(
            metrics, settings.connection_timeout, settings.max_connections, limit,
            max_per_address=settings.max_connections_per_address, handshake_timeout=settings.handshake_timeout,
            secret=settings.secret_bytes(),
        )

    # -- the files served ----------------------------------------------------------------------

    def add(self, source: ChunkSource, super_seed: bool = False) -> None:
        self.core.add(source, super_seed)
        self._stale.discard(source.raw_id)

    def remove(self, file_id: bytes) -> None:
        """Serve the file no more; the handles our connections hold on it are closed (now, or
        after the payload in flight), so an evicted file's space comes back."""
        self.core.remove(file_id)
        for state in self.core.connections:
            state.shell.forget(file_id)  # type: ignore[union-attr]

    def announce(self, file_id: bytes, index: int) -> None:
        """A chunk of `file_id` became available here: tell the peers that follow it."""
        for state in self.core.announce(file_id, index):
            state.shell.flush()  # type: ignore[union-attr]

    async def keep_offering(self, stop: asyncio.Event, every: float = 2.0) -> None:
        """An origin's offers held by downloaders that stopped taking chunks go stale with time,
        not with traffic: look for room every few seconds."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            for state in self.core.top_up_offers(_now()):
                state.shell.flush()  # type: ignore[union-attr]

    # -- connections ---------------------------------------------------------------------------

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
            # asyncio turns Nagle off only for sockets it knows are TCP (proto 6); an accepted
            # socket of socket.create_server has proto 0, and without this a MANIFEST frame's
            # body waited 40 ms for the delayed ACK of its header.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Room for a few chunks, so that most go out in one sendfile call (no wake-up per
            # 64 KiB as the buffer drains); no more than autotuning reaches (tcp_wmem) here.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
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
                await self.handle(reader, writer, label, None if tls is not None else conn)
            except asyncio.CancelledError:
                pass  # the server stops: this task is the stream's top (3.11's streams log it as an error)
            finally:
                if not served.done():  # cancelled with the server, as it stops
                    served.set_result(None)

        try:
            if tls is not None:  # TLS off the loop, in a thread of the connection's own
                stream = await TlsStream.accept(conn, tls, label, self.handshake_timeout)
                await serve(stream, stream)  # type: ignore[arg-type]
            else:
                await loop.connect_accepted_socket(lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(), serve), conn)
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

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str, sock: socket.socket | None = None
    ) -> None:
        """One admitted connection (within the caps, past TLS), until it ends. `sock`: the plain
        TCP socket under `writer`, whose payloads then go out with sendfile."""
        core = self.core
        conn = _Connection(writer, core.connect(), sock)
        state = conn.state
        frames = wire.FrameReader(max_payload=0, accept=wire.SERVER_HANDSHAKE)
        loop = asyncio.get_running_loop()
        try:
            while True:
                # A peer that never completes its HELLO is dropped sooner than an idle one.
                timeout = self.idle_timeout if state.ready else min(self.idle_timeout, self.handshake_timeout)
                async with asyncio.timeout(timeout):
                    data = await reader.read(READ_SIZE)
                if not data:
                    break
                pending = memoryview(data)
                while pending:  # frame by frame: the handshake widens what the next may be
                    pending = pending[frames.receive_frame(pending) :]
                    if (event := frames.next_event()) is None:
                        break
                    answering = state.ready
                    actions = core.receive(state, event, loop.time())
                    if state.ready:
                        frames.accept = wire.SERVER_RECEIVES
                    if not answering:  # the handshake
                        if await self._carry_out(conn, actions):
                            return
                        continue
                    if not actions:  # what the peer holds, say: at most new offers to write
                        if state.queued:
                            conn.flush()
                        continue
                    # A peer that stops reading is dropped like an idle one.
                    async with asyncio.timeout(self.idle_timeout):
                        if await self._carry_out(conn, actions):
                            return
                        conn.flush()
                        await writer.drain()  # one answer at a time in our memory
                if writer.transport.get_write_buffer_size():
                    async with asyncio.timeout(self.idle_timeout):
                        await writer.drain()
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
            core.disconnect(state)
            for handle in conn.opened.values():
                handle.close()
            writer.close()

    async def _carry_out(self, conn: _Connection, actions: list[Action]) -> bool:
        """Write what the core answered; True if the connection is to close."""
        writer = conn.writer
        for action in actions:
            match action:
                case Send(frame=frame):
                    writer.write(wire.encode(frame))
                case SendChunk():
                    refusal = await self._serve_chunk(conn, action)
                    if refusal is not None:
                        action = refusal
                    else:
                        continue
                case SendManifest(file_id=file_id, body=body):
                    view = memoryview(body)  # written from the one copy we keep
                    writer.write(wire.manifest_header(file_id, len(view)))
                    for start in range(0, len(view), COPY_BLOCK):
                        writer.write(view[start : start + COPY_BLOCK])
                        await writer.drain()
            if isinstance(action, Refuse):
                self.metrics.refused.labels(action.error.code.name.lower()).inc()
                writer.write(wire.encode(action.error))
                if action.close:
                    await writer.drain()
                    return True
        return False

    def _refuse_connection(self, label: str) -> None:
        self.metrics.refused.labels("too_many_connections").inc()
        self._refusals += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_EVERY:
            log.warning("connections refused: too many connections", last_peer=label, refused=self._refusals)
            self._refusals, self._refusal_logged = 0, now


    async def _serve_chunk(self, conn: _Connection, chunk: SendChunk) -> Refuse | None:
        """Send one chunk: the header, then the payload with sendfile. A file that cannot be
        read, or changed since it was hashed, is refused instead."""
        started = time.perf_counter()
        source, index, length = chunk.source, chunk.index, chunk.length
        file_id = source.raw_id
        handle = conn.opened.get(file_id)
        if handle is None:
            try:
                handle = conn.opened[file_id] = source.open()
            except OSError as exc:
                log.error("cannot open a served file", file=source.manifest.name, error=exc.strerror)
                return Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "file unreadable", file_id, index))
        if not source.servable(handle):
            if file_id not in self._stale:
                self._stale.add(file_id)
                log.warning("file changed on disk since it was hashed; not serving it", file=source.manifest.name)
            return Refuse(wire.Error(wire.ErrorCode.UNAVAILABLE, "file changed since hashed", file_id, index))
        if self.upload_limit is not None:
            await asyncio.sleep(self.upload_limit.reserve(length, asyncio.get_running_loop().time()))
        # The offers this chunk makes room for go out ahead of it, in the same write: the core
        # counts the chunk as sent now (if the payload fails, so does the connection).
        self.core.chunk_sent(conn.state, file_id, index, _now())
        head = b"".join(wire.encode(frame) for frame in conn.state.take_queued()) + wire.chunk_header(file_id, index, length)
        conn.state.in_payload, conn.sending = True, file_id
        try:
            if await _send_payload(conn, handle, chunk.offset, length, head) < length:
                # The file shrank under us: the frame is cut short, so the stream is unusable.
                log.warning("file shrank while being served", file=source.manifest.name)
                raise ConnectionAbortedError("short file")
        finally:
            conn.state.in_payload, conn.sending = False, None
            if file_id not in self.core.sources:  # removed while we sent
                conn.forget(file_id)
        conn.flush()
        self.metrics.chunks_served.inc()
        self.metrics.bytes_served.inc(length)
        self.metrics.serve_seconds.observe(time.perf_counter() - started)
        return None
