"""A connection to a peer, over real sockets on 127.0.0.1, plain and over mutual TLS: each chunk
is received whole by the connection's thread and checked there, before the loop hears of it;
a peer cannot make it take more chunks than were asked for; our frames reach the peer through
the thread that owns a TLS connection; a server's TLS connection (`TlsStream`) carries requests
and chunks larger than the socket buffers, intact."""

import asyncio
import hashlib
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from p2p_shared import wire
from p2p_shared.errors import RemoteProtocolError
from p2p_shared.handshake import ServerHandshake
from p2p_shared.net.peer_client import Received, open_peer
from p2p_shared.net.tls import TlsStream, client_context, server_context

REPO = Path(__file__).resolve().parents[2]
FID = bytes(range(32))
CHUNK = 1 << 20  # larger than what a socket takes in one go


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run([str(REPO / "deploy" / "make-certs.sh"), str(folder)], check=True, capture_output=True)
    return folder


class Holder:
    """A peer that greets, then answers each REQUEST with the chunk `payloads` holds for it
    (sent whole, bad or not); `extra` chunks nobody asked for follow the first answer."""

    def __init__(self, payloads: dict[int, bytes], extra: int = 0) -> None:
        self.payloads, self.extra = payloads, extra
        self.requests: list[int] = []

    async def serve_until_closed(self, read, writer) -> None:
        """`writer`: asyncio's stream writer, or a TlsStream (which reads too)."""
        try:
            await self.serve(read, writer.write, writer.drain)
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve(self, read, write, drain) -> None:
        handshake, frames = ServerHandshake(None), wire.FrameReader(max_payload=0)
        while True:
            data = await read(65536)
            if not data:
                return
            frames.receive_data(data)
            while (event := frames.next_event()) is not None:
                if isinstance(event, wire.Hello):
                    for frame in handshake.receive(event):
                        write(wire.encode(frame))
                elif isinstance(event, wire.Request):
                    self.requests.append(event.index)
                    for index in [event.index] + [event.index] * self.extra:
                        payload = self.payloads[index]
                        write(wire.chunk_header(FID, index, len(payload)) + payload)
                    self.extra = 0
                await drain()


async def plain_holder(holder: Holder) -> tuple[asyncio.Server, int]:
    async def on_connect(reader, writer):
        await holder.serve_until_closed(reader.read, writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def tls_holder(holder: Holder, certs: Path) -> tuple[socket.socket, asyncio.Task, int]:
    """The same peer behind our server side of TLS (client certificates required)."""
    context = server_context(certs / "seeder.crt", certs / "seeder.key", certs / "ca.crt")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)

    async def accept_one():
        conn, _ = await asyncio.get_running_loop().sock_accept(listener)
        stream = await TlsStream.accept(conn, context, "test", timeout=10)
        await holder.serve_until_closed(stream.read, stream)

    return listener, asyncio.create_task(accept_one()), listener.getsockname()[1]


def checker(digests: dict[int, bytes], written: dict[int, bytes], threads: set[int]):
    def check(index: int, data: memoryview) -> bool:
        threads.add(threading.get_ident())
        if hashlib.sha256(data).digest() != digests[index]:
            return False
        written[index] = bytes(data)
        return True

    return check


async def fetch(port: int, tls, indices: list[int], check, depth: int = 2) -> list:
    conn = await open_peer("127.0.0.1", port, chunk_size=CHUNK, depth=depth, timeout=10, tls=tls)
    conn.check = check
    try:
        conn.send_all([wire.Request(FID, i) for i in indices])
        return [await conn.next_event(10) for _ in indices]  # (buffers kept: the pool has `depth`)
    finally:
        conn.close()


@pytest.mark.parametrize("mode", ["plain", "tls"])
async def test_each_chunk_is_checked_whole_by_the_receiving_thread_before_the_loop_hears_of_it(mode, certs):
    good, bad = os.urandom(CHUNK), os.urandom(CHUNK - 7)
    holder = Holder({0: good, 1: bad})
    digests = {0: hashlib.sha256(good).digest(), 1: hashlib.sha256(b"what the manifest says").digest()}
    written: dict[int, bytes] = {}
    threads: set[int] = set()
    if mode == "plain":
        server, port = await plain_holder(holder)
        tls = None
    else:
        listener, task, port = await tls_holder(holder, certs)
        tls = client_context(certs / "ca.crt", certs / "leecher.crt", certs / "leecher.key")
    try:
        first, second = await fetch(port, tls, [0, 1], checker(digests, written, threads))
    finally:
        if mode == "plain":
            server.close()
        else:
            listener.close()
            await task
    assert holder.requests == [0, 1]  # our frames reached the peer (over TLS: through the reader thread)
    assert isinstance(first.buffer, Received) and first.buffer.verdict is True and bytes(first.data) == good
    assert isinstance(second.buffer, Received) and second.buffer.verdict is False and len(second.data) == CHUNK - 7
    assert written == {0: good}  # a payload that does not match is not written
    assert threads and threading.get_ident() not in threads  # checked off the event loop


async def test_a_peer_that_sends_more_chunks_than_were_asked_for_is_refused():
    payload = os.urandom(4096)
    holder = Holder({0: payload}, extra=2)  # the answer, then two more copies unasked
    server, port = await plain_holder(holder)
    try:
        conn = await open_peer("127.0.0.1", port, chunk_size=CHUNK, depth=2, timeout=10)
        try:
            conn.send(wire.Request(FID, 0))
            await conn.next_event(10)
            await conn.next_event(10)  # the pool of 2 buffers is lent out now (none released)
            with pytest.raises(RemoteProtocolError, match="did not ask for"):
                await conn.next_event(10)
        finally:
            conn.close()
    finally:
        server.close()


async def test_a_client_without_a_certificate_gets_nothing_from_a_tls_server(certs):
    holder = Holder({0: os.urandom(4096)})
    listener, task, port = await tls_holder(holder, certs)
    anonymous = client_context(certs / "ca.crt", None, None)
    try:
        with pytest.raises(Exception):
            await fetch(port, anonymous, [0], lambda index, data: True)
        with pytest.raises(OSError):  # the server's side of the handshake refused it
            await task
    finally:
        listener.close()
    assert holder.requests == []


async def test_a_tls_handshake_that_trickles_is_given_up_within_its_time_in_all_and_closed(certs):
    """A client that sends its hello a byte at a time, each within the timeout, is dropped when
    the handshake's time is up, not when a single read waits that long."""
    context = server_context(certs / "seeder.crt", certs / "seeder.key", certs / "ca.crt")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def trickle(sock: socket.socket) -> None:
        record = b"\x16\x03\x01\x02\x00" + bytes(512)  # a handshake record of 512 bytes, slowly
        for byte in record:
            if stop.wait(0.05):  # the pace of the slow peer under test
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return

    with listener, socket.create_connection(listener.getsockname(), timeout=10) as slow:
        conn, _ = await loop.sock_accept(listener)
        sender = threading.Thread(target=trickle, args=(slow,))
        sender.start()
        started = loop.time()
        try:
            with pytest.raises(TimeoutError):
                await TlsStream.accept(conn, context, "slow", timeout=0.5)
            assert loop.time() - started < 5  # (a byte every 0.05 s would take 26 s)
            # The server's side is closed once its handshake thread is out: the client sees the end.
            slow.settimeout(10)
            while await asyncio.to_thread(slow.recv, 4096):
                pass
        finally:
            stop.set()
            sender.join(10)
