"""Load on a real tracker process from other processes: the real message mix (heartbeats and
lookups) from many source addresses. Capacity is a closed loop with a window of requests in
flight; latency is an open loop at a fixed rate.

Each load socket is bound to its own loopback address (all of 127.0.0.0/8 is local on Linux) and
registers, beats for and unregisters its own seeders, as real holders do: the tracker takes a
holder's address from its datagrams and lets only the registering socket keep it alive.

Several tracker replicas (one registry in Redis) share the load: socket k talks to replica
k mod n, as clients spread over replicas."""

from __future__ import annotations

import multiprocessing
import os
import selectors
import socket
import statistics
import time

from p2p_shared import messages

FILE = messages.FileEntry(file_id="ab" * 32, name="load.bin", size=1 << 30, chunk_size=512 * 1024)
PORT = 7000  # seeder j of a socket serves on PORT + j


def _sockets(count: int) -> list[socket.socket]:
    """`count` UDP sockets, each bound to its own loopback address."""
    socks = []
    for k in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{(k + 1) >> 8}.{(k + 1) & 255}", 0))
        socks.append(s)
    return socks


def _ask(sock: socket.socket, address: tuple[str, int], message: messages.Request) -> messages.Reply:
    sock.settimeout(1.0)
    data = messages.encode_request(message)
    for _ in range(5):
        sock.sendto(data, address)
        try:
            while (reply := messages.decode(sock.recv(65536))).txn != message.txn:
                pass
            return reply
        except TimeoutError:
            continue
    raise TimeoutError(f"no answer from tracker {address}")


def _share(seeders: int, socks: int, k: int) -> range:
    """The seeders (their index on socket k) that socket k owns."""
    return range(len(range(k, seeders, socks)))


def _send_all(sock: socket.socket, address: tuple[str, int], requests: list[bytes], window: int = 64) -> None:
    """Send requests (txn 1..n), `window` in flight, until each is answered."""
    sock.settimeout(2.0)
    pending: set[int] = set()
    sent = 0
    while sent < len(requests) or pending:
        while sent < len(requests) and len(pending) < window:
            sock.sendto(requests[sent], address)
            sent += 1
            pending.add(sent)
        try:
            pending.discard(_txn(sock.recv(65536)))
        except TimeoutError:  # lost datagrams: send those again
            for txn in sorted(pending):
                sock.sendto(requests[txn - 1], address)


Addresses = list[tuple[str, int]]  # the tracker's replicas


def _fleet(addresses: Addresses, socks: list[socket.socket], seeders: int, kind: type = messages.Register) -> list[int]:
    """Register (or unregister) `seeders` seeders spread over the sockets; their connection ids."""
    conns = []
    for k, sock in enumerate(socks):
        address = addresses[k % len(addresses)]
        conn = _ask(sock, address, messages.Connect(txn=1)).conn
        conns.append(conn)
        fields = {"files": [FILE]} if kind is messages.Register else {}
        _send_all(sock, address, [
            messages.encode(kind(txn=j + 1, conn=conn, port=PORT + j, **fields)) for j in _share(seeders, len(socks), k)
        ])
    return conns


def register(addresses: Addresses, count: int, sockets: int = 64) -> None:
    """Register `count` seeders from `sockets` addresses, and leave them registered."""
    socks = _sockets(sockets)
    _fleet(addresses, socks, count)
    for s in socks:
        s.close()


def _templates(seeders: int, socks: int, k: int, conn: int) -> list[bytes]:
    """Socket k's requests: 70% heartbeats for its own seeders, 30% lookups, like a swarm at rest.
    Encoded once by the real encoder with a txn placeholder, so the generator spends its time sending."""
    own = _share(seeders, socks, k)
    out = []
    for i in range(10 * max(1, len(own))):
        if i % 10 < 7:
            message: messages.Request = messages.Heartbeat(txn=999_999_999, conn=conn, port=PORT + own[i % len(own)])
        else:
            message = messages.Lookup(txn=999_999_999, conn=conn, name=FILE.name)
        out.append(messages.encode(message).replace(b"999999999", b"%d"))
    return out


def _request(templates: list[bytes], txn: int) -> bytes:
    return templates[txn % len(templates)] % txn


def _txn(reply: bytes) -> int:
    start = reply.index(b'"txn":') + 6
    return int(reply[start : reply.index(b",", start)])


def _load_sockets(addresses: Addresses, seeders: int, count: int) -> tuple[list[socket.socket], list[list[bytes]]]:
    """Sockets with their seeders registered, non-blocking, and each socket's request templates."""
    socks = _sockets(count)
    conns = _fleet(addresses, socks, seeders)
    for s in socks:
        s.setblocking(False)
    return socks, [_templates(seeders, count, k, conn) for k, conn in enumerate(conns)]


def _leave(addresses: Addresses, socks: list[socket.socket], seeders: int) -> None:
    """Unregister the sockets' seeders, once the answers still in flight have come in."""
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    while events := selector.select(0.2):
        for key, _ in events:
            try:
                key.fileobj.recv(65536)
            except BlockingIOError:
                pass
    selector.close()
    _fleet(addresses, socks, seeders, messages.Unregister)
    for s in socks:
        s.close()


def _closed_loop(addresses, seeders: int, seconds: float, sockets: int, window: int, results) -> None:
    socks, templates = _load_sockets(addresses, seeders, sockets)
    selector = selectors.DefaultSelector()
    for k, s in enumerate(socks):
        selector.register(s, selectors.EVENT_READ, k)
    counter = 0
    for k, s in enumerate(socks):
        for _ in range(window):
            counter += 1
            s.sendto(_request(templates[k], counter), addresses[k % len(addresses)])
    answered = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for key, _ in selector.select(0.2):
            s = key.fileobj
            while True:
                try:
                    s.recv(65536)
                except BlockingIOError:
                    break
                answered += 1
                counter += 1
                s.sendto(_request(templates[key.data], counter), addresses[key.data % len(addresses)])
    results.put(answered)
    _leave(addresses, socks, seeders)


def capacity(addresses: Addresses, seeders: int, seconds: float = 5.0, cpu: int | None = None) -> float:
    """Sustained answers per second, from one load process (pinned to `cpu` if given)."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=_closed_loop, args=(addresses, seeders, seconds, 64, 2, results))
    worker.start()
    if cpu is not None:
        set_affinity(worker.pid, cpu)
    answered = results.get(timeout=seconds + 60)
    worker.join(60)
    return answered / seconds


def set_affinity(pid: int, cpu: int) -> None:
    try:
        os.sched_setaffinity(pid, {cpu})
    except (AttributeError, OSError):  # not Linux, or fewer CPUs: run unpinned
        pass


def _open_loop(addresses, seeders: int, rate: float, seconds: float, results) -> None:
    socks, templates = _load_sockets(addresses, seeders, 64)
    selector = selectors.DefaultSelector()
    for s in socks:
        selector.register(s, selectors.EVENT_READ)
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    interval = 1.0 / rate
    total = int(rate * seconds)
    txn = 0
    start = time.perf_counter()
    while txn < total or (sent_at and time.perf_counter() - start < seconds + 2):
        now = time.perf_counter()
        while txn < total and start + txn * interval <= now:
            txn += 1
            k = txn % len(socks)
            socks[k].sendto(_request(templates[k], txn), addresses[k % len(addresses)])
            sent_at[txn] = time.perf_counter()
        wait = max(0.0, start + txn * interval - time.perf_counter()) if txn < total else 0.05
        for key, _ in selector.select(wait):
            while True:
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    break
                t0 = sent_at.pop(_txn(data), None)
                if t0 is not None:
                    rtts.append(time.perf_counter() - t0)
    _leave(addresses, socks, seeders)
    rtts.sort()
    results.put({
        "rate": rate,
        "sent": total,
        "answered": len(rtts),
        "p50_ms": 1000 * statistics.median(rtts),
        "p99_ms": 1000 * rtts[int(0.99 * (len(rtts) - 1))],
    })


def latency(addresses: Addresses, seeders: int, rate: float, seconds: float = 3.0, cpu: int | None = None) -> dict:
    """Round-trip times at a fixed request rate (open loop), p50 and p99 in milliseconds, from
    one load process (pinned to `cpu` if given)."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    worker = multiprocessing.Process(target=_open_loop, args=(addresses, seeders, rate, seconds, results))
    worker.start()
    if cpu is not None:
        set_affinity(worker.pid, cpu)
    answer = results.get(timeout=seconds + 60)
    worker.join(60)
    return answer
