"""TLS for the chunk channel. Trust is membership: any certificate signed by the swarm CA is
accepted, and host names are not checked (seeders are found by address, often changing ones).

The kernel cannot take the record layer here (no `tls` module: `OP_ENABLE_KTLS` would have
nothing to hand it to, and Python 3.11 does not name it), so TLS is done in user space, by
OpenSSL, but off the event loop: a server's connection in a thread of its own (`TlsStream`),
a client's in its connection's reader thread (net/peer_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import P2PError

if TYPE_CHECKING:
    from ..settings import TlsSettings


def _load(context: ssl.SSLContext, cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    try:
        if cert is not None:
            context.load_cert_chain(cert, key)
        if ca is not None:
            context.load_verify_locations(ca)
    except (OSError, ssl.SSLError) as exc:
        raise P2PError(f"cannot load TLS files: {exc}") from None
    return context


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """A seeder's context; with a CA, clients must present a certificate it signed (mutual TLS)."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A leecher's context: seeders must present a certificate signed by the CA."""
    context = _load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key, ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def serving_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The server context the settings ask for (None: plain TCP); a certificate without its key,
    or a key without its certificate, is one clear error."""
    if not (settings.tls_cert or settings.tls_key):
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise P2PError("TLS needs both --tls-cert and --tls-key")
    return server_context(settings.tls_cert, settings.tls_key, settings.tls_ca)


def fetching_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The client context for fetching from peers: TLS once a CA is given."""
    return client_context(settings.tls_ca, settings.tls_cert, settings.tls_key) if settings.tls_ca else None


class TlsSocket:
    """A TCP socket and the TLS session on it, joined through memory buffers (`ssl.MemoryBIO`),
    not by OpenSSL reading and writing the socket itself: OpenSSL then made two system calls a
    16 KiB record to receive (the header, then the body) and one to send, where we make one per
    chunk sent and, downloading, one per 256 KiB received. One thread at a time may use it."""

    # Bytes of ciphertext taken from the kernel at once, by the side that receives chunks and by
    # the side that receives requests (a server keeps one such buffer per connection, up to its
    # connection cap: one TLS record's worth, as OpenSSL's own buffer was).
    RECEIVE_CLIENT = 256 * 1024
    RECEIVE_SERVER = 16 * 1024 + 512

    __slots__ = ("sock", "tls", "incoming", "outgoing", "_raw")

    def __init__(
        self, sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, receive: int
    ) -> None:
        self.sock, self.tls, self.incoming, self.outgoing = sock, tls, incoming, outgoing
        self._raw = memoryview(bytearray(receive))

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """`data` as TLS records, to send (OpenSSL encrypts it in one call, the GIL released)."""
        self.tls.write(data)
        return self.outgoing.read()

    def sealed(self) -> bytes:
        """What TLS has to send on its own account (a key update's answer, say), or b""."""
        return self.outgoing.read() if self.outgoing.pending else b""

    def receive(self) -> bool:
        """Take what the socket holds into TLS (the socket non-blocking: BlockingIOError if
        nothing is there); False at the peer's end of the stream."""
        n = self.sock.recv_into(self._raw)
        if n:
            self.incoming.write(self._raw[:n])
        return n > 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        """Wakes whichever thread waits on the socket; its reads end."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def _handshake(sock: socket.socket, context: ssl.SSLContext, server_side: bool) -> TlsSocket:
    """The TLS handshake on a blocking socket (its timeout set)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=server_side)
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError:
            if outgoing.pending:  # the alert that tells the peer why
                with contextlib.suppress(OSError):
                    sock.sendall(outgoing.read())
            raise
        if outgoing.pending:  # (after the last step too: a server's session tickets)
            sock.sendall(outgoing.read())
        if done:
            return TlsSocket(sock, tls, incoming, outgoing, TlsSocket.RECEIVE_SERVER if server_side else TlsSocket.RECEIVE_CLIENT)
        data = sock.recv(65536)
        if not data:
            raise ConnectionResetError("the peer closed the connection during the TLS handshake")
        incoming.write(data)


async def handshake(sock: socket.socket, context: ssl.SSLContext, timeout: float, *, server_side: bool) -> TlsSocket:
    """The TLS handshake on a connected socket, in a thread (the loop goes on), within `timeout`
    in all (a peer that trickles its bytes does not get a timeout per read); the socket is
    closed if it fails, and left non-blocking if it succeeds."""
    sock.settimeout(timeout)
    thread = asyncio.ensure_future(asyncio.to_thread(_handshake, sock, context, server_side))
    try:
        session = await asyncio.wait_for(asyncio.shield(thread), timeout)
    except BaseException:
        if thread.done():
            _close_quietly(sock)
        else:
            # Still in the handshake (out of time, or we were cancelled): make it fail now; the
            # socket is closed once the thread is out of it, not under it.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            thread.add_done_callback(lambda done: (done.cancelled() or done.exception(), _close_quietly(sock)))
        raise
    sock.setblocking(False)
    return session


def _close_quietly(sock: socket.socket) -> None:
    """Close after a failed handshake with a FIN, not a reset: what the peer sent and TLS did not
    read is read first (a reset could overtake the alert TLS sent it)."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)  # (with a timeout, Python would wait for more)
        for _ in range(16):
            if not socket.socket.recv(sock, 65536):
                break
    sock.close()


class TlsStream:
    """A server's TLS connection, driven by a thread of its own: the encryption of what we send
    (a chunk in one call, the GIL released) and the decryption of what the peer sends happen off
    the event loop. The thread alone uses the TLS object (OpenSSL's are not to be shared by
    threads at once); the loop hands it what to write through a queue and a wake-up socket, and
    it hands the loop what it read with call_soon_threadsafe.

    For the peer server's coroutine it stands in for asyncio's stream reader and writer: the
    thread reads ahead at most READ_AHEAD bytes the coroutine has not taken (beyond that, a flood
    of requests waits in the kernel, as with a paused transport); `write` queues; `drain` waits
    until the thread has handed everything queued to the kernel.
    """

    READ_AHEAD = 65536  # bytes read and not yet taken, at most

    def __init__(self, sock: TlsSocket, label: str) -> None:
        self.label = label
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._wake = socket.socketpair()
        for end in self._wake:
            end.setblocking(False)
        self._lock = threading.Lock()  # what both sides touch: the queues and counts below
        self._out: deque[bytes | bytearray | memoryview] = deque()
        self._queued = 0  # bytes written to us, not yet to the kernel
        self._unread = 0  # bytes the thread read that the coroutine has not taken
        self._stalled = False  # the thread stopped reading: READ_AHEAD bytes wait
        self._inbox = bytearray()  # (loop side) what was read, not yet taken
        self._reading: asyncio.Future[None] | None = None
        self._draining: asyncio.Future[None] | None = None
        self._closing = False  # no more writes; the thread ends once the queue is out
        self._error: Exception | None = None
        self._eof = False
        self._finished = False  # the thread is done, and has closed the sockets
        self.transport = self  # (the coroutine aborts "the transport")
        threading.Thread(target=self._run, name=f"tls-{label}", daemon=True).start()

    @classmethod
    async def accept(cls, sock: socket.socket, context: ssl.SSLContext, label: str, timeout: float) -> TlsStream:
        """The server side of the TLS handshake (a client certificate checked if the context
        asks for one), in a thread, within `timeout`."""
        return cls(await handshake(sock, context, timeout, server_side=True), label)

    # -- the loop's side -------------------------------------------------------------------------

    async def read(self, n: int) -> bytes:
        """At most `n` decrypted bytes; b"" once the peer is done."""
        while not self._inbox:
            if self._eof:
                return b""
            if self._error is not None:
                raise self._error
            self._reading = self._loop.create_future()
            try:
                await self._reading
            finally:
                self._reading = None
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        with self._lock:
            self._unread -= len(data)
            resume = self._stalled and self._unread < self.READ_AHEAD
            if resume:
                self._stalled = False
        if resume:
            self._poke()
        return data

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        with self._lock:
            idle = not self._out  # else the thread has a wake-up coming, or is at work on the queue
            self._out.append(data)
            self._queued += len(data)
        if idle:
            self._poke()

    async def drain(self) -> None:
        """Until everything written is with the kernel."""
        if self._error is not None:
            raise self._error
        with self._lock:
            if not self._queued:
                return
            self._draining = self._loop.create_future()
        try:
            await self._draining
        finally:
            self._draining = None

    def get_write_buffer_size(self) -> int:
        return self._queued

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Close once what is queued is sent (an error frame, say)."""
        self._closing = True
        self._poke()

    def abort(self) -> None:
        """Close now; what is queued is dropped."""
        self._closing = True
        with self._lock:
            self._out.clear()
            if not self._finished:  # wakes the thread
                self._sock.shutdown()
        self._poke()

    def _poke(self) -> None:
        # Under the lock: the thread closes the sockets when it ends (descriptor numbers are reused).
        with self._lock:
            if not self._finished:
                with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                    self._wake[1].send(b"\0")

    def _deliver(self, data: bytes | None, error: Exception | None) -> None:
        """From the thread: bytes read (b"": the end), everything written, or an error."""
        if error is not None:
            self._error = self._error or error
        if data is not None:
            if data:
                self._inbox += data
            else:
                self._eof = True
        reading, draining = self._reading, self._draining
        if reading is not None and not reading.done() and (data is not None or self._error is not None):
            reading.set_result(None)  # (read() raises the error, or returns the bytes)
        if draining is not None and not draining.done():
            if self._error is not None:
                draining.set_exception(self._error)
            elif not self._queued:
                draining.set_result(None)

    def _ended(self) -> None:
        self._closing = True
        self._deliver(None, self._error or ConnectionResetError(f"{self.label}: connection closed"))

    # -- the thread's side -----------------------------------------------------------------------

    def _post(self, data: bytes | None = None, error: Exception | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: no one waits any more
            self._loop.call_soon_threadsafe(self._deliver, data, error)

    def _run(self) -> None:
        try:
            self._pump()
        except (OSError, ValueError) as exc:
            self._post(error=exc if isinstance(exc, OSError) else ConnectionResetError(str(exc)))
        finally:
            with self._lock:
                self._finished = True
                for sock in (self._sock, *self._wake):
                    sock.close()
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._ended)

    def _pump(self) -> None:
        sock, wake = self._sock, self._wake[0]
        poll = select.poll()  # (select() would refuse descriptors past 1023)
        poll.register(wake, select.POLLIN)
        sending = memoryview(b"")  # ciphertext the kernel has not taken yet
        owed = 0  # plaintext bytes that `sending` carries, counted as queued until it is all sent
        while True:
            blocked = False  # the kernel's buffer is full
            while True:
                if not sending:
                    if owed:
                        with self._lock:
                            self._queued -= owed
                            empty = not self._queued
                        owed = 0
                        if empty:
                            self._post()
                    with self._lock:
                        if not self._out:
                            break
                        plain = self._out.popleft()
                    sending, owed = memoryview(sock.encrypt(plain)), len(plain)
                try:
                    sending = sending[sock.sock.send(sending) :]
                except BlockingIOError:
                    blocked = True
                    break
            if self._closing and not sending and not self._out:
                return
            want_read = False
            with self._lock:
                room = self.READ_AHEAD - self._unread
                if room <= 0:
                    self._stalled = True
            if room > 0:
                # What TLS holds decrypted, record after record, then what the socket holds.
                data, eof = bytearray(), False
                try:
                    while len(data) < room:
                        data += sock.tls.read(room - len(data))
                except ssl.SSLWantReadError:
                    want_read = True
                except ssl.SSLZeroReturnError:
                    eof = True
                if extra := sock.sealed():
                    sending = memoryview(bytes(sending) + extra)
                if want_read and not data:
                    try:
                        eof = not sock.receive()
                    except BlockingIOError:
                        pass
                    else:
                        want_read = eof
                        if not eof:
                            continue
                if data or eof:
                    with self._lock:
                        self._unread += len(data)
                    self._post(bytes(data) if data else b"")
                    if eof and not data:
                        return
                    continue
            mask = (select.POLLIN if want_read else 0) | (select.POLLOUT if blocked else 0)
            if mask:
                poll.register(sock, mask)
            else:  # (a hung-up socket would wake us without end)
                with contextlib.suppress(KeyError):
                    poll.unregister(sock)
            if any(fd == wake.fileno() for fd, _ in poll.poll()):
                with contextlib.suppress(BlockingIOError):
                    wake.recv(4096)
