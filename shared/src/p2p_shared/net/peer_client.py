"""One connection to a peer: chunk payloads received in place, checked where they land.

Plain TCP: a thread of this connection reads the socket (blocking calls, the GIL released),
frame by frame: a header, then a whole chunk payload with one `recv_into(MSG_WAITALL)` straight
into a buffer from this connection's small pool. The same thread then hands the payload to the
download's `check` (SHA-256 and pwrite, which release the GIL too), so a chunk costs the event
loop one wake-up, with its verdict, instead of a wake-up per 64 KiB read and a hop to a verify
pool. Frames become events on a queue that the download's worker for this peer consumes
(net/worker.py); our frames (requests, announcements) are written from the loop without
blocking it.

TLS: the same thread, which then owns the TLS connection alone (OpenSSL's objects are not to
be used by two threads at once): it reads without blocking and waits in select() for the
socket or for our frames to write, which the loop hands it with a wake-up byte. TLS records
are decrypted straight into the pooled buffer, off the loop. The handshake (mutual, with the
same contexts as before, net/tls.py) runs in a thread of its own before that.

Either way the pool refuses any payload beyond the requests in flight, so a peer cannot make us
allocate more than `depth` chunk buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import select
import socket
import ssl
import threading
from collections.abc import Callable

from .. import wire
from ..errors import PeerClosed, PeerConnectError, PeerRejected, PeerTimeout, RemoteProtocolError
from ..handshake import ClientHandshake
from .tls import TlsSocket, handshake

MAX_QUEUED_EVENTS = 1024
WAITALL_FROM = 4096  # bytes: reads this large wait for all of them (a payload); smaller ones, for the frame's next bytes

# What the receiving thread makes of a payload: True (it matched the manifest and is written),
# False (it did not; nothing written), None (not checked: the worker asks the verify pool), or
# the error the write raised.
Check = Callable[[int, memoryview], "bool | Exception | None"]


class Received:
    """The buffer of a chunk received by the connection's thread, with what `check` said of it."""

    __slots__ = ("buffer", "verdict")

    def __init__(self, buffer: mmap.mmap, verdict: bool | Exception | None) -> None:
        self.buffer = buffer
        self.verdict = verdict

    def result(self) -> bool:
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return bool(self.verdict)


class PeerConnection:
    def __init__(self, label: str, chunk_size: int, depth: int) -> None:
        self.label = label
        self.chunk_size = chunk_size
        self.depth = depth
        self.events: asyncio.Queue = asyncio.Queue()
        self._frames = wire.FrameReader(self._allocate, max_payload=chunk_size, accept=wire.CLIENT_HANDSHAKE)
        self._sock: socket.socket | TlsSocket | None = None  # the socket `_reader` reads (a TLS one if `_tls_out`)
        self._tls_out: bytearray | None = None  # TLS: our frames for the reader thread to write
        self._wake: tuple[socket.socket, socket.socket] | None = None  # TLS: tells the reader thread there is some
        self._reader: threading.Thread | None = None
        self._owned: socket.socket | TlsSocket | None = None  # the socket, until closed
        self._finished = False  # the reader thread is done with it
        self._writer_fd: int | None = None  # the loop waits for room to write on this descriptor
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outgoing = bytearray()  # what the socket did not take yet (plain TCP)
        self._lock = threading.Lock()  # the buffer pool and the inbox, shared with the reader thread
        self._inbox: list = []
        self._inbox_scheduled = False
        self._closed = False
        self._free: list[mmap.mmap] = []
        self._lent = 0
        self.error: Exception | None = None
        self.announces = False  # the peer sends and understands ANNOUNCE frames
        self.check: Check | None = None  # set by the download: hash and write in the receiving thread

    # -- chunk buffers (called from the reader thread and the loop) --------------------------

    def _allocate(self, size: int) -> mmap.mmap:
        with self._lock:
            if size > self.chunk_size:
                raise RemoteProtocolError(f"chunk of {size} bytes, larger than the manifest's chunk size")
            if self._lent >= self.depth:
                raise RemoteProtocolError("peer sent a chunk we did not ask for")
            self._lent += 1
            # Anonymous mappings are page-aligned: a chunk received into one can be written to
            # the part file directly (O_DIRECT, storage.PartFile), with no copy through the cache.
            return self._free.pop() if self._free else mmap.mmap(-1, self.chunk_size)

    def take_chunks(self, chunk_size: int, depth: int) -> None:
        """From now on, take chunk payloads of up to `chunk_size` bytes, `depth` at a time (a
        connection opened for a manifest goes on to serve the download)."""
        with self._lock:
            self.chunk_size, self.depth = chunk_size, depth
            self._frames.max_payload = chunk_size

    def release(self, buffer: mmap.mmap | Received) -> None:
        """Give a chunk buffer back once its bytes are verified and written."""
        if isinstance(buffer, Received):
            buffer = buffer.buffer
        with self._lock:
            self._lent -= 1
            self._free.append(buffer)

    # -- the reader thread, and writing --------------------------------------------------------

    def _start_reader(self, sock: socket.socket | TlsSocket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock, self._owned, self._loop = sock, sock, loop
        if isinstance(sock, TlsSocket):
            self._tls_out = bytearray()
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)
            target = self._read_tls
        else:
            sock.setblocking(True)
            target = self._read_plain
        self._reader = threading.Thread(target=self._run_reader, args=(sock, target), name=f"peer-{self.label}", daemon=True)
        self._reader.start()

    def _run_reader(self, sock: socket.socket, read: Callable[[socket.socket], None]) -> None:
        try:
            read(sock)
        except (OSError, RemoteProtocolError, PeerClosed) as exc:
            if isinstance(exc, OSError):
                exc = PeerClosed(f"{self.label} connection lost: {exc.strerror or exc}")
            self._post([exc])
        finally:
            # The sockets close here, unless the loop still waits to write on ours: descriptor
            # numbers are reused, so it must not be closed under the loop's feet.
            with self._lock:
                self._finished = True
                waiting = self._writer_fd is not None
                if not waiting:
                    self._close_sockets()
            if waiting:
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # a closed loop: it waits for nothing any more
                    self._loop.call_soon_threadsafe(self._abort)

    def _close_sockets(self) -> None:
        """With the lock held, by whichever side is last: the reader thread, or the loop."""
        for sock in (self._owned, *(self._wake or ())):
            if sock is not None:
                sock.close()

    def _read_plain(self, sock: socket.socket) -> None:
        frames = self._frames
        while True:
            target = frames.get_buffer()
            size = len(target)
            n = sock.recv_into(target, size, socket.MSG_WAITALL if size >= WAITALL_FROM else 0)
            if n == 0:
                raise PeerClosed(f"{self.label} closed the connection")
            self._received(n)

    def _read_tls(self, sock: TlsSocket) -> None:
        frames, wake = self._frames, self._wake
        assert wake is not None and self._tls_out is not None
        poll = select.poll()  # (select() would refuse descriptors past 1023)
        poll.register(wake[0], select.POLLIN)
        sending = b""  # ciphertext of our frames the kernel has not taken yet
        while True:
            if self._tls_out:
                with self._lock:
                    plain = bytes(self._tls_out)
                    self._tls_out.clear()
                sending += sock.encrypt(plain)
            blocked = False  # the kernel's buffer is full
            if sending:
                try:
                    sending = sending[sock.sock.send(sending) :]
                except BlockingIOError:
                    pass
                blocked = bool(sending)
            # A payload comes in TLS records of 16 KiB at most: they are decrypted one after the
            # other into its buffer, with what the socket holds taken in as needed, and the frame
            # reader hears once of all that came.
            target = frames.get_buffer()
            n, want_read = 0, False
            try:
                while n < len(target):
                    try:
                        got = sock.tls.read(len(target) - n, target[n:])
                    except ssl.SSLWantReadError:
                        if not sock.receive():
                            break  # the end of the stream
                        continue
                    n += got
                    if not got or len(target) < WAITALL_FROM:
                        break
            except BlockingIOError:  # the socket has no more for now
                want_read = True
            except ssl.SSLZeroReturnError:
                pass
            sending += sock.sealed()
            if n:
                self._received(n)
                continue
            if not want_read:
                raise PeerClosed(f"{self.label} closed the connection")
            poll.register(sock, select.POLLIN | (select.POLLOUT if blocked else 0))
            if any(fd == wake[0].fileno() for fd, _ in poll.poll()):
                with contextlib.suppress(BlockingIOError):
                    wake[0].recv(4096)

    def _received(self, nbytes: int) -> None:
        """In the reader thread: `nbytes` more of the stream; whole frames go to the loop, a
        chunk's payload checked first."""
        frames = self._frames
        frames.buffer_updated(nbytes)
        events = []
        while (event := frames.next_event()) is not None:
            if isinstance(event, wire.Chunk) and self.check is not None:
                try:
                    verdict = self.check(event.index, event.data)
                except Exception as exc:  # a write that failed ends the download, on the loop
                    verdict = exc
                event = wire.Chunk(event.file_id, event.index, event.data, Received(event.buffer, verdict))
            events.append(event)
        if events:
            self._post(events)

    def _post(self, items: list) -> None:
        """From the reader thread: onto the loop, with one wake-up for what piles up meanwhile."""
        with self._lock:
            self._inbox.extend(items)
            if self._inbox_scheduled:
                return
            self._inbox_scheduled = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._take_inbox)
        except RuntimeError:  # the loop is closed: no one is waiting any more
            pass

    def _take_inbox(self) -> None:
        with self._lock:
            items, self._inbox = self._inbox, []
            self._inbox_scheduled = False
        for item in items:
            if isinstance(item, Exception):
                self._fail(item)
                return
            self.events.put_nowait(item)
        if self.events.qsize() > MAX_QUEUED_EVENTS:
            self._fail(RemoteProtocolError("peer sent more frames than we asked for"))

    def _write_tls(self, data: bytes) -> None:
        """Hand our frames to the reader thread, which alone may use the TLS connection."""
        assert self._tls_out is not None and self._wake is not None
        with self._lock:
            if self._finished:
                return  # (its failure is on its way to the events)
            self._tls_out += data
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                self._wake[1].send(b"\0")

    def _write_plain(self, data: bytes) -> None:
        """Write without blocking the loop: what the socket does not take waits for room."""
        sock = self._sock
        assert sock is not None and self._loop is not None
        if self._outgoing:
            self._outgoing += data
            return
        with self._lock:
            if self._finished:
                return  # (its failure is on its way to the events)
            try:
                sent = sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the reader thread sees the same and reports it
            if sent < len(data):
                self._outgoing += data[sent:]
                self._writer_fd = sock.fileno()
                self._loop.add_writer(self._writer_fd, self._flush_outgoing)

    def _flush_outgoing(self) -> None:
        sock = self._sock
        assert sock is not None and self._loop is not None
        try:
            sent = sock.send(self._outgoing, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            sent = len(self._outgoing)  # dropped: the reader thread reports the failure
        del self._outgoing[:sent]
        if not self._outgoing:
            self._stop_waiting_to_write()

    def _stop_waiting_to_write(self) -> None:
        with self._lock:
            if self._writer_fd is not None:
                assert self._loop is not None
                self._loop.remove_writer(self._writer_fd)
                self._writer_fd = None
                if self._finished:  # the reader thread left the sockets to us
                    self._close_sockets()

    # -- both ------------------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
            self.events.put_nowait(exc)
        self._abort()

    def _abort(self) -> None:
        self._closed = True
        self._outgoing.clear()
        self._stop_waiting_to_write()
        with self._lock:
            sock, self._sock = self._sock, None
            if sock is not None and not self._finished:
                # Wakes the reader thread, which then closes the sockets.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def send(self, event: wire.Event) -> None:
        self.send_all((event,))

    def send_all(self, events) -> None:
        """Our frames, in one write; the chunks they announce, in one ANNOUNCE per file."""
        if self.error is not None:
            raise self.error
        if self._closed:
            raise PeerClosed(f"{self.label}: connection closed")
        data = b"".join(wire.encode(event) for event in _announcing_once(events))
        if not data:
            return
        if self._tls_out is not None:
            self._write_tls(data)
        else:
            self._write_plain(data)
            if self.error is not None:
                raise self.error

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
        self._abort()


def _announcing_once(events) -> list[wire.Event]:
    """The frames with every ANNOUNCE of a file merged into its first (up to MAX_ANNOUNCED
    chunks a frame): what a holder learns is the same, in fewer frames for it to read."""
    merged: list[wire.Event] = []
    first: dict[bytes, int] = {}  # file id -> the position of its open ANNOUNCE in `merged`
    for event in events:
        if isinstance(event, wire.Announce):
            at = first.get(event.file_id)
            if at is not None and len(merged[at].indices) + len(event.indices) <= wire.MAX_ANNOUNCED:  # type: ignore[union-attr]
                merged[at] = wire.Announce(event.file_id, merged[at].indices + event.indices)  # type: ignore[union-attr]
                continue
            first[event.file_id] = len(merged)
        merged.append(event)
    return merged


async def _connect(conn: PeerConnection, host: str, port: int, tls: ssl.SSLContext | None, timeout: float) -> None:
    """A TCP connection (and the TLS handshake, in a thread, under `timeout`) for the reader thread."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = await handshake(sock, tls, timeout, server_side=False)
        conn._start_reader(sock, loop)
        return
    raise last or OSError(f"no address for {host}")


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
    try:
        await asyncio.wait_for(_connect(conn, host, port, tls, timeout), timeout)
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise PeerConnectError(f"cannot connect to {host}:{port}: {reason}") from None
    try:
        handshake = ClientHandshake(secret, conn.label, shares=shares)
        if first and secret is None:
            conn._frames.accept = wire.CLIENT_RECEIVES  # their answers may follow the HELLO at once
            conn.send_all((handshake.hello(), *first))
        else:
            conn.send(handshake.hello())
        while not handshake.done:
            conn.send_all(handshake.receive(await conn.next_event(timeout)))
        conn.announces = bool(handshake.peer_flags & wire.FLAG_ANNOUNCE)
        conn._frames.accept = wire.CLIENT_RECEIVES
        if first and secret is not None:
            conn.send_all(first)
    except BaseException:
        conn.close()
        raise
    return conn
