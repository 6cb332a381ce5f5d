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


async def handshake(sock: socket.socket, context: ssl.SSLContext, timeout: float, *, server_side: bool) -> ssl.SSLSocket:
    """The TLS handshake on a connected socket, in a thread (the loop goes on), within `timeout`
    in all (a peer that trickles its bytes does not get a timeout per read); the socket is
    closed if it fails."""
    tls = context.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False)
    tls.settimeout(timeout)
    thread = asyncio.ensure_future(asyncio.to_thread(tls.do_handshake))
    try:
        await asyncio.wait_for(asyncio.shield(thread), timeout)
    except BaseException:
        if thread.done():
            _close_quietly(tls)
        else:
            # Still in the handshake (out of time, or we were cancelled): make it fail now; the
            # socket is closed once the thread is out of it, not under it.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(tls, socket.SHUT_RDWR)
            thread.add_done_callback(lambda done: (done.cancelled() or done.exception(), _close_quietly(tls)))
        raise
    return tls


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

    def __init__(self, sock: ssl.SSLSocket, label: str) -> None:
        self.label = label
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._wake = socket.socketpair()
        for end in (sock, *self._wake):
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
            if not self._finished:  # wakes the thread (the socket's own shutdown, not SSLSocket's)
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
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
        sending: memoryview | None = None  # TLS retries a write with the same bytes
        while True:
            blocked = False  # TLS wants the socket writable before it goes on
            while True:
                if sending is None:
                    with self._lock:
                        if not self._out:
                            break
                        sending = memoryview(self._out.popleft())
                try:
                    sent = sock.send(sending)
                except ssl.SSLWantWriteError:
                    blocked = True
                    break
                except ssl.SSLWantReadError:
                    break
                sending = sending[sent:] if sent < len(sending) else None
                with self._lock:
                    self._queued -= sent
                    empty = not self._queued
                if empty:
                    self._post()
            if self._closing and sending is None and not self._out:
                return
            want_read = False
            with self._lock:
                room = self.READ_AHEAD - self._unread
                if room <= 0:
                    self._stalled = True
            if room > 0:
                try:
                    data = sock.recv(room)
                except ssl.SSLWantReadError:
                    want_read = True
                except ssl.SSLWantWriteError:
                    blocked = True
                except ssl.SSLZeroReturnError:
                    data = b""
                if not (want_read or blocked):
                    with self._lock:
                        self._unread += len(data)
                    self._post(data)
                    if not data:
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
